"""Energy meters: the reading model and IMeter (base), one module per meter type (sdm630, sdm120, sdm72)."""
