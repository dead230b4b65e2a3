"""Authentication and role checks as dependencies: `Annotated[Principal, RequireRole(...)]`."""

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth.guard import principal_from_guard
from app.auth.service import Principal, authenticate
from app.core.deps import AppSettings, DbSession
from app.core.errors import Forbidden, Unauthorized
from app.core.security import Role

bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer fw_...`")


class RoleRequirement:
    """A dependency that authenticates the caller and requires at least `role`."""

    def __init__(self, role: Role) -> None:
        self.role = role

    def __call__(
        self,
        request: Request,
        session: DbSession,
        settings: AppSettings,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        principal = principal_from_guard(request)  # checked before the body was read
        if principal is None:
            if credentials is None or credentials.scheme.lower() != "bearer":
                raise Unauthorized("send an API token as 'Authorization: Bearer <token>'")
            principal = authenticate(
                session,
                credentials.credentials,
                touch_every_seconds=settings.token_last_used_resolution_seconds,
            )
        if not principal.role.allows(self.role):
            raise Forbidden(
                f"this needs the {self.role.value} role; the token has {principal.role.value}",
                details={"required_role": self.role.value, "token_role": principal.role.value},
            )
        request.state.principal = principal
        return principal

    def __repr__(self) -> str:
        return f"RoleRequirement({self.role.value})"


def _requirement(role: Role) -> Any:
    return Depends(RoleRequirement(role))


Viewer = Annotated[Principal, _requirement(Role.viewer)]
Editor = Annotated[Principal, _requirement(Role.editor)]
Deployer = Annotated[Principal, _requirement(Role.deployer)]
Admin = Annotated[Principal, _requirement(Role.admin)]
