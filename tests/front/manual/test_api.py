"""front/manual's API over real HTTP, on a real etcd, with the site simulators (EVSE, meters, a car)."""
import pytest_twisted

from evc.testing import wait_for


@pytest_twisted.ensureDeferred
async def test_site_shows_the_chargers_meters_and_control(rig):
    c = rig.client()
    assert (await c.login("alice")).status == 200
    async def ready():
        site = (await c.get("/api/v1/site")).json
        grid = [m for m in site["meters"] if m["name"] == "grid"]
        return site if grid and grid[0]["A"][0] is not None and site["chargers"][0]["status"] == "plugged" else None
    site = await wait_for(ready, 15, "the site live")
    assert [ch["name"] for ch in site["chargers"]] == ["s1"]
    print(site)
