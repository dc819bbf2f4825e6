"""Rebuild offline.html, the page template `dvc plots show` fills (.dvc/config: plots.html_template).

DVC's own page loads vega, vega-lite and vega-embed from cdn.jsdelivr.net, so offline its charts
stay blank. This template carries the same versions DVC asks for (dvc-render 1.x), minified and
inline, with their BSD-3-Clause notices, and no {scripts} placeholder, so nothing is fetched.
Run from the repo root when DVC moves to other versions (needs npm and the npm registry):

    python .dvc/plots/build_offline_html.py
"""
import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGES = {"vega": ("5.20.2", "build/vega.min.js"), "vega-lite": ("5.2.0", "build/vega-lite.min.js"),
            "vega-embed": ("6.18.2", "build/vega-embed.min.js")}
HERE = Path(__file__).resolve().parent


def main() -> None:
    scripts = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (version, path) in PACKAGES.items():
            out = subprocess.run(["npm", "pack", f"{name}@{version}"], cwd=tmp, capture_output=True, text=True,
                                 check=True).stdout.split()[-1]
            with tarfile.open(Path(tmp) / out) as tar:
                code = tar.extractfile(f"package/{path}").read().decode()
                notice = tar.extractfile("package/LICENSE").read().decode()
            scripts.append(f"<!-- {name} {version} ({path})\n{notice.replace('--', '- -')}\n-->\n"
                           f"<script type=\"text/javascript\">\n{code}\n</script>")
    page = ("<!DOCTYPE html>\n<html>\n<head>\n    {refresh_tag}\n    <title>DVC Plot</title>\n"
            + "\n".join(scripts)
            + "\n    <style>\n        table {\n            border-spacing: 15px;\n        }\n    </style>\n"
              "</head>\n<body>\n    {plot_divs}\n</body>\n</html>\n")
    for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}"):
        assert "".join(scripts).count(placeholder) == 0, placeholder  # DVC replaces them in the whole page
    (HERE / "offline.html").write_text(page)
    print(f"wrote {HERE / 'offline.html'} ({len(page) // 1024} KB)")


if __name__ == "__main__":
    main()
