"""The repository's shape: the top level shows the design card and the entry scripts, support code lives
in seqrec/, which never imports the top level, and no script imports another script."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESIGN_CARD = {"replay_buffer.py", "model.py", "ssl_heads.py", "td_lambda.py", "train_offline.py"}
ENTRY_SCRIPTS = {"train_offline.py", "online_eval.py"}          # the top-level scripts users run
BENCHMARK_SCRIPTS = {"bench.py", "compare.py", "sim_ceiling.py"}


def imported_modules(path: Path) -> set[str]:
    """The top-level names of every module `path` imports, anywhere in the file (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_top_level_holds_the_design_card_and_at_most_two_more_entry_scripts():
    python = {p.name for p in ROOT.glob("*.py")}
    assert DESIGN_CARD <= python
    extra = python - DESIGN_CARD
    assert len(extra) <= 2 and extra <= ENTRY_SCRIPTS, extra


def test_the_package_never_imports_a_top_level_module():
    top_level = {p.stem for p in ROOT.glob("*.py")}
    for path in sorted((ROOT / "seqrec").glob("*.py")):
        assert not imported_modules(path) & top_level, f"{path.name} imports {imported_modules(path) & top_level}"


def test_no_script_imports_another_script_and_nothing_imports_an_entry_script():
    scripts = {Path(s).stem for s in ENTRY_SCRIPTS | BENCHMARK_SCRIPTS}
    every_file = [p for p in ROOT.rglob("*.py") if ".git" not in p.parts and "data" not in p.parts]
    for path in every_file:
        imported = imported_modules(path)
        assert not imported & {Path(s).stem for s in ENTRY_SCRIPTS}, f"{path} imports an entry script"
        if path.name in ENTRY_SCRIPTS | BENCHMARK_SCRIPTS:
            assert not imported & scripts, f"the script {path.name} imports {imported & scripts}"


def test_train_offline_reads_as_a_table_of_contents():
    assert len((ROOT / "train_offline.py").read_text().splitlines()) <= 300
