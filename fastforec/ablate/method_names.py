"""The methods of a study: what a ``--methods`` entry means, the config keys a run of it gets,
the row it is in the report, and which methods the others are compared with.

A ``--methods`` entry is the config's own label of a method (``MethodConfig.label``: ``base`` or
``base+aux``), or one of the old method names (the paper's Table 4 rows: forec = mean_teacher x
forec). ``method_settings`` is the one place that spells how an entry becomes the run's
``method.*`` keys; ``method_config`` reads them back the way the config reads a run's file.
"""

from __future__ import annotations

from typing import Sequence

from fastforec.ablate.plan import AblationError
from fastforec.config import AUX_TASKS, BASES, LEGACY_METHOD_NAMES, MethodConfig

DEFAULT_METHODS = tuple(LEGACY_METHOD_NAMES)  # the study's methods when --methods is not given
BASE_AUX_SEP = "+"  # --methods unimatch+forec: base x auxiliary task, as MethodConfig.label writes it
# (base, aux) of every method by the config's label for it
PARTS_BY_LABEL = {MethodConfig(base=b, aux=a).label: (b, a) for b in BASES for a in AUX_TASKS}
# Paired differences are reported against these, and against every plain base that was run (a
# study of unimatch and unimatch+forec compares the two).
BASELINES = ("supervised", "mean_teacher")
# Report rows: the paper's Table 4 reads its rows rec/forec/fgbg (old method names) as additions
# to the mean teacher; every other method is its base and auxiliary task in words.
PAPER_ROW_LABELS = {"rec": "+ reconstruction (rec)", "forec": "+ FOrec", "fgbg": "+ fg/bg prediction"}
BASE_LABELS = {"supervised": "Supervised only", "mean_teacher": "Mean teacher", "fixmatch": "FixMatch",
               "unimatch": "UniMatch", "unimatch_v2": "UniMatch V2"}
AUX_LABELS = {"rec": "reconstruction", "forec": "FOrec", "fgbg": "fg/bg prediction"}
# The auxiliary tasks compared with each other on one base, the first minus the later: the paper's
# claims are FOrec - reconstruction and FOrec - fg/bg prediction (Tables 4 and 5).
AUX_ORDER = ("forec", "rec", "fgbg")


def method_parts(method: str) -> tuple[str, str] | None:
    """(base, aux) of a --methods entry: an old method name (forec = mean_teacher x forec) or a
    method's label, a base (unimatch) or base+aux (unimatch+forec); None when it is neither."""
    if method in LEGACY_METHOD_NAMES:
        return LEGACY_METHOD_NAMES[method]
    return PARTS_BY_LABEL.get(method)


def method_settings(method: str) -> dict[str, str]:
    """The ``method.*`` config keys (without the prefix) that make a run train ``method``: its
    method.base and method.aux, both always set, so a study config cannot change what a row means."""
    parts = method_parts(method)
    if parts is None:  # the --methods parser refuses these; a Run built by hand may not
        raise AblationError(f"--methods: '{method}' is neither a method, a base nor base{BASE_AUX_SEP}aux")
    base, aux = parts
    return {"base": base, "aux": aux}


def method_overrides(method: str) -> list[str]:
    """``method_settings`` as the training command's --set values (``method.base=mean_teacher``, ...)."""
    return [f"method.{key}={value}" for key, value in method_settings(method).items()]


def method_config(method: str) -> MethodConfig:
    """The method section of the config a run of ``method`` trains with."""
    return MethodConfig(**method_settings(method))


def method_label(method: str, methods: Sequence[str] = ()) -> str:
    """The report's name of ``method``'s row among the study's ``methods``: the paper's "+ FOrec"
    when the nearest row above that is not such a "+" row is "Mean teacher", else the full name
    ("Mean teacher + FOrec": below "Supervised only" or "UniMatch", "+ FOrec" would read as that
    base plus FOrec)."""
    above = list(methods)[:list(methods).index(method)] if method in methods else []
    base_row = next((m for m in reversed(above) if m not in PAPER_ROW_LABELS), None)  # the row "+ X" hangs from
    if method in PAPER_ROW_LABELS and base_row == "mean_teacher":
        return PAPER_ROW_LABELS[method]
    cfg = method_config(method)
    return BASE_LABELS[cfg.base] + ("" if cfg.aux == "none" else f" + {AUX_LABELS[cfg.aux]}")


def aux_pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    """(a, b) for every two methods of the study with the same base and different auxiliary tasks
    (neither none), a's task before b's in AUX_ORDER: the rows a - b of the report, by base in the
    order of ``methods``, then by AUX_ORDER."""
    parts = {m: method_parts(m) for m in methods}
    bases = list(dict.fromkeys(p[0] for p in parts.values() if p))  # in the order of --methods
    ranked = sorted((m for m in methods if parts[m] and parts[m][1] != "none"),
                    key=lambda m: (bases.index(parts[m][0]), AUX_ORDER.index(parts[m][1])))
    return [(a, b) for i, a in enumerate(ranked) for b in ranked[i + 1:]
            if parts[a][0] == parts[b][0] and parts[a][1] != parts[b][1]]


def aux_pair_label(a: str, b: str) -> str:
    """The report's name of the row a - b of ``aux_pairs``: "FOrec - reconstruction (Mean teacher)"."""
    (base, aux_a), (_, aux_b) = method_parts(a), method_parts(b)  # type: ignore[misc]
    return f"{AUX_LABELS[aux_a]} - {AUX_LABELS[aux_b]} ({BASE_LABELS[base]})"


def parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if method_parts(m) is None]
    if unknown or not methods:
        raise AblationError(f"--methods: unknown method(s) {', '.join(unknown) or '(none given)'}; choose from "
                            f"{', '.join(LEGACY_METHOD_NAMES)}, or a base ({', '.join(BASES)}) with an optional "
                            f"'{BASE_AUX_SEP}<aux>' ({', '.join(a for a in AUX_TASKS if a != 'none')}), "
                            f"e.g. unimatch{BASE_AUX_SEP}forec")
    if len(set(methods)) != len(methods):
        raise AblationError(f"--methods: '{text}' names a method twice")
    return methods


def baselines(methods: Sequence[str]) -> list[str]:
    """The methods of this study that others are compared with, in order: the BASELINES that were
    run, then every other plain base (an entry that is the label of a base without auxiliary task)."""
    plain = [m for m in methods if m not in BASELINES and m in BASES]
    return [b for b in BASELINES if b in methods] + plain
