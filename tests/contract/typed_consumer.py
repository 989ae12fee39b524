"""A program on the SDK as its users write one: .ci/run type-checks it against the installed wheel.

It runs there with `mypy --strict` in a fresh venv holding nothing but the wheel and mypy, so it
proves that the wheel carries its types (py.typed, the generated .pyi stubs) to its users.
"""

from __future__ import annotations

import asyncio

from sendinchat import Client, UnauthenticatedError
from sendinchat.v1 import users_pb2


async def main(target: str = "127.0.0.1:50051") -> str:
    """Log in as alice; her username, or why she was refused."""
    async with Client(target) as client:
        try:
            user: users_pb2.User = await client.login("alice", "correct-horse")
        except UnauthenticatedError as error:
            return f"refused: {error}"
        return user.username


if __name__ == "__main__":
    print(asyncio.run(main()))
