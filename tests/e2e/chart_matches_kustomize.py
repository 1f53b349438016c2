"""The Helm chart renders what kustomize renders: tests/e2e/check.sh's comparison.

    python3 tests/e2e/chart_matches_kustomize.py CHART.yaml KUSTOMIZE.yaml... [--without KIND/NAME]...

Every object of the kustomize renders (objects of the same kind, namespace and name, such as the
Namespace of manifests/policy and of the base, are merged) must be in the chart's render with the
same content: everything but metadata.labels and metadata.annotations equal, and the kustomize
labels and annotations among the chart's (the chart adds Helm's own). The chart may render
nothing else, except what --without names: objects of the kustomize renders left out of the
comparison (KIND/NAME), such as a Secret the chart's values say exists already.
"""

import base64
import sys

import yaml


def objects(path):
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def key(obj):
    meta = obj["metadata"]
    return (obj["kind"], meta.get("namespace", ""), meta["name"])


def merged(paths):
    found = {}
    for path in paths:
        for obj in objects(path):
            k = key(obj)
            if k in found:
                old = found[k]["metadata"]
                for field in ("labels", "annotations"):
                    old.setdefault(field, {}).update(obj["metadata"].get(field) or {})
            else:
                found[k] = obj
    return found


def comparable(obj):
    """The object without labels and annotations, a Secret's data decoded (kustomize wraps its
    base64 in lines, Helm does not)."""
    copy = dict(obj)
    meta = dict(copy["metadata"])
    meta.pop("labels", None)
    meta.pop("annotations", None)
    copy["metadata"] = meta
    if copy["kind"] == "Secret":
        copy["data"] = {name: base64.b64decode("".join(value.split())) for name, value in (copy.get("data") or {}).items()}
    return copy


def differences(path, left, right, out):
    if isinstance(left, dict) and isinstance(right, dict):
        for field in sorted(set(left) | set(right)):
            differences(f"{path}.{field}", left.get(field), right.get(field), out)
    elif isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
        for index, (a, b) in enumerate(zip(left, right)):
            differences(f"{path}[{index}]", a, b, out)
    elif left != right:
        out.append(f"{path}: chart {right!r}, kustomize {left!r}")


def main(argv):
    skipped = set()
    paths = []
    args = iter(argv)
    for arg in args:
        if arg == "--without":
            skipped.add(next(args))
        else:
            paths.append(arg)
    chart = merged(paths[:1])
    kustomize = {k: v for k, v in merged(paths[1:]).items() if f"{k[0]}/{k[2]}" not in skipped}
    problems = []
    for k, want in sorted(kustomize.items()):
        got = chart.get(k)
        if got is None:
            problems.append(f"{'/'.join(k)}: not rendered by the chart")
            continue
        for field in ("labels", "annotations"):
            have = got["metadata"].get(field) or {}
            for name, value in (want["metadata"].get(field) or {}).items():
                if have.get(name) != value:
                    problems.append(f"{'/'.join(k)}: metadata.{field}[{name}]: chart {have.get(name)!r}, kustomize {value!r}")
        diffs = []
        differences("", comparable(want), comparable(got), diffs)
        problems.extend(f"{'/'.join(k)}: {d}" for d in diffs)
    for k in sorted(set(chart) - set(kustomize)):
        problems.append(f"{'/'.join(k)}: rendered by the chart, not by kustomize")
    print(f"compared {len(kustomize)} objects: {', '.join(sorted({k[0] for k in kustomize}))}")
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
