from tests.conftest import Api


def test_health_and_admin_identity(api: Api) -> None:
    assert api.call("GET", "/health").json()["status"] == "ok"
    me = api.call("GET", "/me", api.admin_key).json()
    assert me == {"object": "principal", "tenant": "admin", "role": "admin"}
