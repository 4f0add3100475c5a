"""Checks the CLI runs on its options before anything loads or trains.

Every check raises ``UsageError`` with one line naming the option, the value and what is
expected; the error boundary (app.py) prints it as ``error: ...`` (exit 2).
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import fields
from pathlib import Path
from typing import Any

from prod_unlearn.errors import UsageError

PACKAGE_DIR = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- numbers, names


def positive_float(opt: str, value, allow_zero: bool = False) -> None:
    if value is None:
        return
    if not math.isfinite(value):
        raise UsageError(f"{opt} {value}: expected a finite number")
    if value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{opt} {value}: expected a {'non-negative' if allow_zero else 'positive'} number")


def device(opt: str, value: str) -> None:
    """The accelerator must exist (the form, auto | cpu | cuda[:N] | mps, is the option's declared pattern)."""
    if value.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"{opt} {value}: CUDA is not available on this machine (use --device cpu or auto)")
        if ":" in value and int(value.split(":")[1]) >= torch.cuda.device_count():
            raise UsageError(f"{opt} {value}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if value == "mps":
        import torch

        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UsageError(f"{opt} {value}: MPS is not available on this machine")


def float_list(opt: str, value: str | None) -> list[float] | None:
    if value is None:
        return None
    out = []
    for v in value.split(","):
        try:
            x = float(v)
        except ValueError:
            raise UsageError(
                f"{opt} {value!r}: {v.strip()!r} is not a number (expected comma-separated positive numbers)"
            ) from None
        positive_float(opt, x)
        out.append(x)
    return out


# ---------------------------------------------------------------- method parameters


def method_params(method, items: list[str]) -> dict:
    """Parse ``-p KEY=VALUE`` against the method's parameter types; run its own validation."""
    from prod_unlearn.methods.base import make_params

    defaults = method.params()
    types = {f.name: type(getattr(defaults, f.name)) for f in fields(method.params)}
    out = {}
    for it in items or []:
        if "=" not in it:
            raise UsageError(f"--param {it}: expected KEY=VALUE")
        k, v = (s.strip() for s in it.split("=", 1))
        if k not in types:
            raise UsageError(
                f"--param {k}: method {method.name} has no such parameter (has: {', '.join(types) or 'none'})"
            )
        typ = types[k]
        if typ is bool:
            if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise UsageError(f"--param {k}={v}: expected true or false")
            out[k] = v.lower() in ("true", "1", "yes")
        elif typ in (int, float):
            try:
                x = typ(v)
            except ValueError:
                raise UsageError(
                    f"--param {k}={v}: expected {'an integer' if typ is int else 'a number'} "
                    f"(method {method.name}, default {getattr(defaults, k)})"
                ) from None
            if typ is float and not math.isfinite(x):
                raise UsageError(f"--param {k}={v}: expected a finite number")
            out[k] = x
        else:
            if not v:
                raise UsageError(f"--param {k}=: expected a value")
            out[k] = typ(v)
    try:
        make_params(method, out)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--param: {e}") from None
    return out


# ---------------------------------------------------------------- paths


def input_path(opt: str, path: Path | None, kind: str = "file or folder") -> None:
    """An input must exist and be a regular file or a folder (a FIFO or device would block or loop)."""
    if path is None:
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"{opt} {path}: no such {kind}") from None
    except OSError as e:
        raise UsageError(f"{opt} {path}: cannot read it ({e.strerror})") from None
    if kind == "folder" and not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{opt} {path}: expected a folder")
    if kind == "file" and not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{opt} {path}: expected a regular file")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise UsageError(
            f"{opt} {path}: not a regular file or folder (a FIFO, socket or device is not "
            f"accepted: it could block forever)"
        )
    if not os.access(path, os.R_OK):
        raise UsageError(f"{opt} {path}: not readable")


# ---------------------------------------------------------------- hub ids


def _host_reachable(host: str, port: int, timeout: float) -> bool:
    import socket
    import threading

    ok: list[bool] = []

    def go():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(timeout + 0.5)  # DNS can hang well past the socket timeout
    return bool(ok and ok[0])


def hub_model(opt: str, name: str | None, timeout: float = 3.0) -> None:
    """For a hub id (not a local folder): fail in seconds when it cannot be fetched, rather than after a
    minute of retries. A model already in the local cache is used offline."""
    if name is None or Path(os.path.expanduser(name)).exists():
        return
    from prod_unlearn.models.loading import looks_like_hub_id

    if not looks_like_hub_id(name):
        raise UsageError(f"{opt} {name}: no such model folder (and not a hub id of the form owner/name)")
    constants: Any  # the huggingface_hub.constants module, or None
    try:
        from huggingface_hub import constants, try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:
        constants, cached = None, False
    offline = any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    if offline:
        if not cached:
            raise UsageError(
                f"{opt} {name}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set "
                f"(download it first, or pass a local model folder)"
            )
        return
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY")
    u = urlparse(proxy or endpoint)
    host, port = u.hostname or "huggingface.co", u.port or (443 if (u.scheme or "https") == "https" else 80)
    if _host_reachable(host, port, timeout):
        return
    if cached:  # use the cached copy without minutes of retries
        os.environ["HF_HUB_OFFLINE"] = "1"
        if constants is not None:
            constants.HF_HUB_OFFLINE = True
        return
    raise UsageError(
        f"{opt} {name}: cannot reach the Hugging Face hub ({host}:{port}) and the model is not in the "
        f"local cache (connect, or pass a local model folder)"
    )
