"""`vpltool` with the pgseg family's ``demo`` preset at other group counts (a probe; no option says it):

    PGSEG_GROUPS=16,8 python studies/probe_pgseg_group_counts.py train-pgseg PAIRS -o RUN --recipe demo ...

``PGSEG_GROUPS=S1,S2``: the first stage's group tokens and output groups S1, the second's S2 (the preset: 8, 4).
The trained model file records its config, so `segment --pgseg` and the proxies read it without this wrapper.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vpltool.models.text.pgseg import model as pgseg_model  # noqa: E402


def main() -> None:
    first, second = (int(v) for v in os.environ["PGSEG_GROUPS"].split(","))
    preset = pgseg_model.demo_config
    pgseg_model.PRESETS["demo"] = lambda **kw: preset(num_group_tokens=(first, second, 0),
                                                       num_output_groups=(first, second), **kw)
    from vpltool.cli import app

    sys.argv = ["vpltool", *sys.argv[1:]]
    app()


if __name__ == "__main__":
    main()
