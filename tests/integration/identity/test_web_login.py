"""Active Directory accounts log in to the console through the login form, as local ones do."""
from __future__ import annotations

from tests.integration.web.conftest import form_login


def test_an_ad_account_logs_in_through_the_form(ad, ad_env, anon_client):
    response = form_login(anon_client, "CORP\\user011", ad["AD_USER_PASSWORD"], "/admin?q=Vms%3A")
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/admin?q=Vms%3A"
    me = anon_client.get("/api/v1/auth/me").json()
    assert (me["username"], me["domain"]) == ("user011", "CORP")


def test_a_wrong_ad_password_stays_on_the_form(ad, ad_env, anon_client):
    response = form_login(anon_client, "CORP\\user011", "wrong-" + ad["AD_USER_PASSWORD"])
    assert response.status_code == 401 and 'role="alert"' in response.text
    assert anon_client.get("/api/v1/auth/me").status_code == 401
