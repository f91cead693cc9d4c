"""What answers give away: tokens that live too long are refused."""

from __future__ import annotations

import jwt

from tests.stack import Stack


async def test_a_token_that_expires_in_the_year_9999_is_unauthorized(embedded_stack: Stack) -> None:
    stack = embedded_stack
    claims = jwt.decode(stack.member_token, options={"verify_signature": False})
    forever = jwt.encode(
        {**claims, "exp": 253402300799},
        stack.settings.secret_key.get_secret_value(),  # type: ignore[union-attr]
        algorithm="HS256",
    )
    response = await stack.client.get("/v1/jobs", headers=stack.headers(forever))
    assert response.status == 401
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="conveyor"'
    assert "lives longer" in (await response.json())["detail"]
