"""Chargers: the ICharger interface every charger type offers to control and the fronts."""
