"""`make install-check`: install the package as a user would, into a throwaway venv, and run it.

`pip install .` from the repository into a fresh venv in a temporary directory (deleted at the
end), then `target-cbx1 --about`, `target-cbx1 --about --format json` (which must list every
setting of target_cbx1.settings.Settings) and `cbx1-sandbox --help`. It catches a dependency that is
imported but not declared, a file missing from the wheel, or a broken entry point, which the
editable install of `make test` hides. It needs only the package index that pip uses.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = ("api_url", "access_key", "org_id")


def run(command: list[str], cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the check with its output when it exits non-zero."""
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(
            f"install-check: `{' '.join(command)}` exited with {done.returncode}\n"
            f"--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-6000:]}"
        )
    return done


def source_tree() -> tuple[str, set[str], set[str]]:
    """The version, settings and secret settings of the source tree (the development install running
    this script).
    """
    sys.path.insert(0, str(ROOT))
    from target_cbx1.settings import Settings, __version__

    fields = Settings.model_fields
    secrets = {
        name
        for name, field in fields.items()
        if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("secret")
    }
    return __version__, set(fields), secrets


def check(python: str) -> None:
    started = time.monotonic()
    version, settings, secrets = source_tree()
    with tempfile.TemporaryDirectory(prefix="target-cbx1-install-check-") as scratch:
        venv = Path(scratch) / "venv"
        bin_dir = venv / "bin"
        run([python, "-m", "venv", str(venv)])
        pip = [str(bin_dir / "python"), "-m", "pip", "--disable-pip-version-check", "--quiet"]
        run([*pip, "install", str(ROOT)], cwd=scratch)

        # Run from the scratch directory, so the checkout's target_cbx1/ cannot shadow the install.
        about = run([str(bin_dir / "target-cbx1"), "--about"], cwd=scratch).stdout
        if f"Version: {version}\n" not in about:
            sys.exit(f"install-check: `target-cbx1 --about` does not show version {version}:\n{about}")
        document = json.loads(
            run([str(bin_dir / "target-cbx1"), "--about", "--format", "json"], cwd=scratch).stdout
        )
        properties = document.get("settings", {}).get("properties", {})
        missing = sorted((settings | set(REQUIRED)) - set(properties))
        if missing:
            sys.exit(f"install-check: `target-cbx1 --about --format json` lacks the settings {missing}")
        unmarked = sorted(name for name in secrets | {"access_key"} if not properties[name].get("secret"))
        if unmarked:
            sys.exit(f"install-check: `target-cbx1 --about --format json` does not mark {unmarked} secret")
        run([str(bin_dir / "cbx1-sandbox"), "--help"], cwd=scratch)
        located = run(
            [
                str(bin_dir / "python"),
                "-c",
                "import target_cbx1, pathlib; print(pathlib.Path(target_cbx1.__file__).parent)",
            ],
            cwd=scratch,
        ).stdout.strip()
        package = Path(located)
        if not package.is_relative_to(venv) or not (package / "py.typed").is_file():
            sys.exit(f"install-check: the installed package at {package} is not the venv's or lacks py.typed")
    print(
        f"install-check: pip install . into a clean venv ({python}), target-cbx1 --about (version "
        f"{version}, {len(properties)} settings) and cbx1-sandbox --help passed in "
        f"{time.monotonic() - started:.0f}s"
    )


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument(
        "--python", default=sys.executable, help="interpreter of the clean venv (default: this one)"
    )
    check(cli.parse_args().python)


if __name__ == "__main__":
    main()
