"""KServe's gRPC v2 client against a server; prints what it got as one JSON object.

Run as ``python -m tests.integration.kserve_grpc_calls ADDRESS`` in its own process:
kserve's generated protocol modules and tritonclient's register the same ``inference.*``
messages in protobuf's default pool, so they cannot be imported in one process (the test
process imports tritonclient). The server must serve ``add_mul`` (tests/onnx_models.py).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as messages
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from kserve.protocol.infer_type import RequestedOutput

A = np.arange(8, dtype=np.float32).reshape(2, 4)
B = np.full((2, 4), 0.5, np.float32)


def request(raw: bool, **kwargs: Any) -> InferRequest:
    """Numpy data goes raw (raw_input_contents); lists go in the typed contents."""
    inputs = [
        InferInput(name, [2, 4], "FP32", data=array if raw else array.ravel().tolist())
        for name, array in (("a", A), ("b", B))
    ]
    return InferRequest(model_name="add_mul", infer_inputs=inputs, **kwargs)


def outputs(response: Any) -> dict[str, Any]:
    return {
        "id": response.id,
        "model_name": response.model_name,
        "outputs": {o.name: o.as_numpy().tolist() for o in response.outputs},
    }


async def calls(address: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    # No retries: every answer is the server's first.
    async with InferenceGRPCClient(address, timeout=30, retries=0) as client:
        found["live"] = await client.is_server_live()
        found["ready"] = await client.is_server_ready()
        found["model_ready"] = await client.is_model_ready("add_mul")
        found["unknown_model_ready"] = await client.is_model_ready("no-such-model")
        found["raw"] = outputs(await client.infer(request(True, request_id="kserve-raw")))
        found["typed"] = outputs(
            await client.infer(
                request(
                    False,
                    request_id="kserve-typed",
                    request_outputs=[RequestedOutput("product")],
                    model_version="1",
                )
            )
        )
        missing = request(True)
        missing.model_name = "no-such-model"
        try:
            await client.infer(missing)
        except grpc.RpcError as error:
            found["unknown_model"] = [error.code().name, error.details()]
    # The client has no metadata call: KServe's own stub asks for it.
    async with grpc.aio.insecure_channel(address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        metadata = await stub.ModelMetadata(messages.ModelMetadataRequest(name="add_mul"))
        server = await stub.ServerMetadata(messages.ServerMetadataRequest())
    found["metadata"] = {
        "name": metadata.name,
        "versions": list(metadata.versions),
        "platform": metadata.platform,
        "inputs": [[t.name, t.datatype, list(t.shape)] for t in metadata.inputs],
        "outputs": [[t.name, t.datatype, list(t.shape)] for t in metadata.outputs],
    }
    found["server"] = {"name": server.name, "extensions": list(server.extensions)}
    return found


if __name__ == "__main__":
    print(json.dumps(asyncio.run(calls(sys.argv[1]))))
