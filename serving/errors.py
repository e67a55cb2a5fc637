"""What the model server answers when it cannot: a gRPC status code and a message, the same on the
gRPC and REST protocols."""
from __future__ import annotations

import grpc


class ServingError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def reason_of(message: str) -> str:
    """The line of a TensorFlow op error that says what was wrong (it precedes the "[[node"
    marker), e.g. "Unknown image file format. One of JPEG, PNG, GIF, BMP required."."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("[[") and i:
            return lines[i - 1]
    return lines[-1] if lines else "invalid argument"
