"""ftspec compiler: spec loading, validation, feasibility, pins, dataset checks and compilation.

Pure Python by contract: nothing here imports torch, transformers, peft, accelerate, deepspeed,
bitsandbytes or datasets, so `ftspec lint` stays fast enough for a pre-commit hook.
"""

if __name__ != "ftspec.compiler":  # pragma: no cover - guards against `import compiler` from the repo root
    raise ImportError(
        "import this package as ftspec.compiler (pip install -e .), not as the top-level 'compiler'"
    )

__version__ = "0.1.0"
