from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.core.pagination import Page
from app.core.security import Role


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200, examples=["ci-bot"])
    role: Role = Field(examples=["editor"])
    expires_at: datetime | None = Field(
        default=None, description="Optional expiry; the token is refused afterwards."
    )


class TokenRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: Role
    hint: str = Field(description="The first characters of the secret, to recognise it.")
    created_at: datetime
    created_by_id: int | None
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenRead):
    token: str = Field(description="The secret. Shown once; only its sha256 digest is stored.")


class TokenPage(Page[TokenRead]):
    pass
