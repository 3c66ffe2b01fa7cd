"""The write-ups: results (``experiments.results``) as report documents.

``build_report`` turns a demo's ``DemoResults`` into its report, ``build_compare_report`` a
``CompareResults`` into compare's; ``gpt2tune.report`` renders either to Markdown and HTML. Each
report is a list of sections, one function each (``demo``, ``demo_experiments``,
``demo_answers``, ``compare``);
the parts both reports have are written once (``shared``), the verdicts are chosen from the
measured numbers (``verdicts``), and numbers and names are formatted in one place (``text``).
The write-up reads only the results value, never the runner's objects.
"""

from gpt2tune.experiments.writeup.compare import COMPARE_SECTIONS, build_compare_report
from gpt2tune.experiments.writeup.demo import build_report
from gpt2tune.experiments.writeup.demo_runs import SECTIONS

__all__ = ["COMPARE_SECTIONS", "SECTIONS", "build_compare_report", "build_report"]
