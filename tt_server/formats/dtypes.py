"""The numpy dtype of each wire ``DType``: what request tensors, job columns and results are decoded into."""

from __future__ import annotations

import numpy as np

from tt_server.types import DType

# Little-endian, as the wire format says; on little-endian hosts these are the native dtypes, so
# ``frombuffer`` views need no byte swapping before TensorFlow copies them.
NUMPY_DTYPES: dict[DType, np.dtype] = {
    d: np.dtype(object) if d is DType.STRING else np.dtype(d.value).newbyteorder("<") for d in DType
}
