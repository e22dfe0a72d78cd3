"""Small synthetic results documents (conformance/results.py's format) for the tools' tests."""

from __future__ import annotations

import copy
import json

TITLES = {"FWD-1": "Output shape, for any leading shape", "FWD-5": "Empty normalised axis",
          "ACC-1": "Every element within the tolerance model's bound", "ACC-5":
          "Accurate beyond the float32 accumulator's range", "TOL-1": "The tolerance model",
          "GRAD-1": "VJP against the reference", "MET-2": "Scale covariance",
          "ZZZ-1": "A clause of an unknown section", "ACC-10": "A later ACC clause"}


def worst(error, bound=9.5, dtype="float32", label="output"):
    return {"error_ulps": error, "bound_ulps": bound, "ratio": error / bound, "dtype": dtype,
            "label": label, "case": {"describe": f"x: {dtype}[2, 7] weight: None eps: 1e-05",
                                     "repro": "from rmsnorm_conformance.conformance.cases import Case, decode\n"
                                              "case = Case(...)", "file": None}}


def result(clause, impl="mlx-fast-cpu", status="pass", *, level="MUST", reason=None,
           error=None, bound=9.5, dtype="float32", label="output", dtypes=None, by_d=None,
           title=None):
    """A result; ``error`` (ulps) gives it a worst record and a per-dtype entry."""
    if status != "pass" and reason is None:
        reason = f"{clause} {status.lower()} for {impl}"
    w = None if error is None else worst(error, bound, dtype, label)
    r = {"clause": clause, "title": title or TITLES.get(clause, clause), "impl": impl,
         "level": level, "status": status, "reason": reason, "tests": 1,
         "examples": 0 if status == "skip" else 25, "time_s": 0.5, "worst": w,
         "dtypes": dtypes if dtypes is not None else (
             {} if w is None else {dtype: {"status": status, "examples": 25, "worst": w}})}
    if by_d is not None:
        r["by_d"] = by_d
    return r


def implementation(device="cpu", *, framework="mlx", version="0.32.4", state="ok", reason=None,
                   fingerprint=None, entry_point=None):
    return {"entry_point": entry_point or f"rmsnorm_conformance.impl.mlx_fast:{device}",
            "distribution": {"name": "rmsnorm-conformance", "version": "0.2.0"},
            "state": state, "reason": reason,
            "environment": {"framework": framework, "version": version, "device": device},
            "capabilities": {"dtypes": ["float32", "float16", "bfloat16"]},
            "fingerprint": fingerprint}


def document(results_, *, host="host-a", impls=None, profile="rmsnorm-default",
             created="2026-11-26T10:00:00Z", crashes=(), version="0.2.0"):
    """A valid document; implementations default to one per impl id in the results, with the
    device taken from the id's last part."""
    if impls is None:
        impls = {r["impl"]: implementation(r["impl"].rsplit("-", 1)[-1]) for r in results_
                 if r["impl"] != "(suite)"}
    return {
        "schema": "rmsnorm-conformance/results", "schema_version": 1, "created": created,
        "suite": {"version": version, "commit": "3923f8d0123456789abc", "spec_sha256": "a" * 64},
        "run": {"profile": profile,
                "options": {"impl": ["mlx-*"], "clause": [], "strict_should": False,
                            "isolation": "process", "call_timeout": 30.0, "workers": 2},
                "duration_s": 61.2, "exit_status": 0},
        "host": {"name": host, "platform": "Linux-6.1-x86_64-with-glibc2.36",
                 "machine": "x86_64", "python": "3.11.7", "cpu_count": 2},
        "implementations": copy.deepcopy(impls),
        "results": copy.deepcopy(list(results_)),
        "worker_crashes": list(crashes),
    }


def write(path, doc):
    path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return str(path)
