"""Server reflection that also serves the protos' comments, so `grpcurl describe` shows them.

grpcio-reflection rebuilds file descriptors from the runtime pool, which has no comments. The
descriptor set generated next to the stubs (clients/regenerate_stubs.py) keeps them; this servicer
answers with those files where it has them.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from importlib import resources
from typing import Any, cast

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

SERVICE_NAME = "grpc.reflection.v1alpha.ServerReflection"


def _files_with_comments() -> dict[str, bytes]:
    raw = resources.files("sendinchat.v1").joinpath("sendinchat.binpb").read_bytes()
    files = descriptor_pb2.FileDescriptorSet.FromString(raw).file
    return {f.name: f.SerializeToString() for f in files}


class CommentedReflectionServicer(reflection_pb2_grpc.ServerReflectionServicer):
    """Reflection whose file descriptors carry source comments (wraps grpcio-reflection's servicer)."""

    def __init__(self, service_names: list[str]) -> None:
        self._inner = ReflectionServicer(service_names)
        self._service_names = frozenset(service_names)
        self._commented = _files_with_comments()

    async def ServerReflectionInfo(
        self,
        request_iterator: AsyncIterable[reflection_pb2.ServerReflectionRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        """ServerReflection.ServerReflectionInfo, with comments."""
        # The stubs call it a coroutine; at runtime it is an async generator.
        responses = cast(
            AsyncIterator[reflection_pb2.ServerReflectionResponse],
            self._inner.ServerReflectionInfo(self._resolving_methods(request_iterator), context),
        )
        async for response in responses:
            if response.HasField("file_descriptor_response"):
                protos = response.file_descriptor_response.file_descriptor_proto
                for index, serialized in enumerate(protos):
                    name = descriptor_pb2.FileDescriptorProto.FromString(serialized).name
                    protos[index] = self._commented.get(name, serialized)
            yield response

    async def _resolving_methods(
        self, requests: AsyncIterable[reflection_pb2.ServerReflectionRequest]
    ) -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        # The runtime pool cannot find a method by its full name ("pkg.Service.Method"), which
        # `grpcurl describe pkg.Service.Method` asks for; the file of its service is the answer.
        async for request in requests:
            if request.HasField("file_containing_symbol"):
                parent = request.file_containing_symbol.rpartition(".")[0]
                if parent in self._service_names:
                    request.file_containing_symbol = parent
            yield request


def enable_reflection(service_names: list[str], server: grpc.aio.Server) -> None:
    """Register reflection for service_names (and for itself) on server."""
    servicer = CommentedReflectionServicer([*service_names, SERVICE_NAME])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]  # untyped in grpc stubs
