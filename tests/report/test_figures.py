"""The plots: PNG images, drawn without touching process-wide matplotlib state."""

from __future__ import annotations

import subprocess
import sys
import textwrap

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_every_plot_is_a_png_and_pyplot_is_never_imported():
    # a fresh interpreter: another test may have imported pyplot into this one
    code = textwrap.dedent("""
        import struct, sys
        from gpt2tune.report import figures

        rows = [{"step": s, "loss": 9 - s / 10} for s in range(1, 21)]
        rows += [{"step": 10, "val_loss": 8.5}, {"step": 20, "val_loss": 8.0}]
        pngs = {
            "loss_curve": figures.loss_curve(rows, "run"),
            "loss_curves": figures.loss_curves([("News", [("LoRA", rows), ("full", rows)]),
                                                ("Falstaff", [("LoRA", rows)])]),
            "perplexity_by_method": figures.perplexity_by_method(
                {"base": 3245.0, "LoRA": 3100.0}, {"base": 4300.0, "priming": 4000.0}, "Falstaff"),
            "style_scores": figures.style_scores({"base": 0.2, "LoRA": 0.4}, 0.7, 0.1, "Falstaff"),
            "rank_sweep": figures.rank_sweep([(1, 512, 4269.0), (4, 2048, 4242.0)],
                                             [("LoRA r=8 (all-linear)", 16384, 4199.0),
                                              ("DoRA r=4 (c_attn)", 2432, 4230.0)],
                                             3722.0, 3332928, 4300.0, "Falstaff"),
        }
        for name, png in pngs.items():
            width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
            print(name, png[:8].hex(), width, height)
        print("pyplot imported:", "matplotlib.pyplot" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[-1] == "pyplot imported: False"
    sizes = {}
    for line in lines[:-1]:
        name, signature, width, height = line.split()
        assert bytes.fromhex(signature) == PNG_SIGNATURE, name
        sizes[name] = (int(width), int(height))
    # figsize (inches) x dpi 110: the two-panel figures are twice as wide as one panel
    assert sizes["loss_curves"] == (2 * 6 * 110, 4 * 110)
    assert sizes["perplexity_by_method"] == (11 * 110, round(3.4 * 110))
    assert len(sizes) == 5
