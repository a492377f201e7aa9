"""KServe's own Python clients against a running server: ``python kserve_clients.py HTTP GRPC``.

Run in a process of its own: kserve's generated gRPC modules declare the same protobuf
messages as tritonclient's, and the two cannot be imported into one process (the tests
import tritonclient). Prints one JSON object of what each call answered; the test checks it.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

IMAGE = np.zeros((1, 1, 8, 8), np.float32)
IMAGE[0, 0, 1:7, 3:5] = 1.0  # a vertical bar: a "1" in the digits' 8x8 drawing


async def v1(base: str) -> dict[str, object]:
    client = InferenceRESTClient(RESTConfig(protocol="v1"))
    try:
        answer = await client.infer(base, {"instances": IMAGE.tolist()}, model_name="digits")
        return {
            "is_server_live": await client.is_server_live(base),
            "is_model_ready": await client.is_model_ready(base, "digits"),
            "predictions": answer["predictions"],
        }
    finally:
        await client.close()


async def v2(base: str) -> dict[str, object]:
    client = InferenceRESTClient(RESTConfig(protocol="v2"))
    try:
        tensor = InferInput("image", list(IMAGE.shape), "FP32")
        tensor.set_data_from_numpy(IMAGE, binary_data=True)
        response = await client.infer(base, InferRequest("digits", [tensor]), model_name="digits")
        outputs = {o.name: o.as_numpy().tolist() for o in response.outputs}
        return {
            "is_server_live": await client.is_server_live(base),
            "is_server_ready": await client.is_server_ready(base),
            "is_model_ready": await client.is_model_ready(base, "digits"),
            "is_model_ready_unknown": await client.is_model_ready(base, "nope"),
            "outputs": outputs,
        }
    finally:
        await client.close()


async def grpc_v2(address: str) -> dict[str, object]:
    client = InferenceGRPCClient(address)
    try:
        tensor = InferInput("image", list(IMAGE.shape), "FP32")
        tensor.set_data_from_numpy(IMAGE, binary_data=False)
        response = await client.infer(InferRequest("digits", [tensor]))
        outputs = {o.name: o.as_numpy().tolist() for o in response.outputs}
        return {
            "is_server_live": await client.is_server_live(),
            "is_server_ready": await client.is_server_ready(),
            "is_model_ready": await client.is_model_ready("digits"),
            "outputs": outputs,
        }
    finally:
        await client.close()


async def main(base: str, address: str) -> None:
    answers = {"v1": await v1(base), "v2": await v2(base), "grpc": await grpc_v2(address)}
    print(json.dumps(answers))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
