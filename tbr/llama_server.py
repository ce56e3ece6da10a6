"""`python -m tbr.llama_server ARGS`: llama-cpp-python's OpenAI server with ggml's AMX repacking off.

The same as `python -m llama_cpp.server ARGS` (tbr.serve starts it), except on CPUs with AMX: there
ggml moves quantised weights into an AMX "extra buffer type", and llama-cpp-python 0.3.36's build
segfaults in llama_decode on them (seen with SmolLM2's q8_0 and Qwen2.5-Coder's Q4_K_M GGUFs on a Xeon
with amx_int8: the server died on its first completion). The high-level `Llama` class has no switch
for it, so the model parameters' default is patched before the server loads the model.
"""

from __future__ import annotations

import runpy
import sys

from tbr.models import cpu_has_amx


def disable_amx_repack() -> bool:
    """Make llama.cpp's default model parameters skip extra buffer types where the CPU has AMX.
    Returns whether it did (elsewhere llama.cpp's own default, on, stays)."""
    if not cpu_has_amx():
        return False
    import llama_cpp.llama_cpp as ll

    default = getattr(ll.llama_model_default_params, "tbr_default", ll.llama_model_default_params)

    def params() -> ll.llama_model_params:
        p = default()
        p.use_extra_bufts = False
        return p

    params.tbr_default = default  # type: ignore[attr-defined]  # idempotent: never wrap twice
    ll.llama_model_default_params = params
    return True


def main() -> None:
    disable_amx_repack()
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
