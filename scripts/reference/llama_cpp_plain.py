"""Imports llama_cpp with plain CPU weight buffers.

Extra buffer types (AMX, repacked weights) crash with a general protection fault on this VM's
CPU in llama-cpp-python 0.3.36 (built with GGML_NATIVE=ON), so every model this module's
callers load uses the plain CPU buffers. Import `Llama` and `llama_cpp` from here.
"""
import llama_cpp
import llama_cpp.llama_cpp as llama_cpp_lib
from llama_cpp import Llama

_default_model_params = llama_cpp_lib.llama_model_default_params


def _model_params_without_extra_buffers():
    params = _default_model_params()
    params.use_extra_bufts = False
    return params


llama_cpp_lib.llama_model_default_params = _model_params_without_extra_buffers

__all__ = ["Llama", "llama_cpp", "llama_cpp_lib"]
