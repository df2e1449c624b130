"""The space config: the example loads, and every error names the file and the offending line.

Each broken config marks the line the error must point at with ``# <-``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from connectors.spaces.space import SpaceConfigError, load_config

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "space"

GOOD_HEAD = """\
[space]
name = "t"
dir = "out"
base_port = 0

[[node]]
name = "city-centre"
roles = ["operator"]
"""

TAX = """
[[node]]
name = "tax-bureau"
roles = ["provider"]

[[node.dataset]]
file = "datasets/tax.json"
source = { kind = "csv", path = "data/tax.csv" }
offers = ["policies/tax-score.json"]
"""


@pytest.fixture
def space_dir(tmp_path: Path) -> Path:
    for sub in ("datasets", "policies", "data"):
        shutil.copytree(EXAMPLE / sub, tmp_path / sub)
    return tmp_path


def write(directory: Path, text: str) -> tuple[Path, int]:
    path = directory / "space.toml"
    path.write_text(text, encoding="utf-8")
    marked = [i for i, line in enumerate(text.splitlines(), start=1) if "# <-" in line]
    return path, (marked[0] if marked else 0)


def fails_at(directory: Path, text: str, *fragments: str) -> SpaceConfigError:
    path, line = write(directory, text)
    with pytest.raises(SpaceConfigError) as info:
        load_config(path)
    err = info.value
    assert str(err).startswith(f"{path}:{line}: "), str(err)
    assert err.line == line
    for fragment in fragments:
        assert fragment in str(err), str(err)
    return err


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE / "space.toml")
    assert config.name == "example"
    assert config.operator.name == "city-centre"
    assert [n.name for n in config.nodes] == ["city-centre", "tax-bureau", "court", "bank-a"]
    assert config.node("bank-a").roles == ("consumer", "provider")
    assert config.dir == (EXAMPLE / "space-output").resolve()
    kinds = {ds.id: ds.source.kind for n in config.nodes for ds in n.datasets}
    assert kinds == {
        "tax-paid": "csv",
        "court-judgments": "sqlite",
        "dishonest-debtors": "csv",
        "bank-a-loans": "parquet",
    }
    court = config.node("court").datasets[0]
    assert court.source.table == "judgments"
    assert court.source.path.is_absolute() and court.source.path.is_file()


def test_request_body_fills_owner_and_assigner(space_dir: Path) -> None:
    path, _ = write(space_dir, GOOD_HEAD + TAX)
    ds = load_config(path).node("tax-bureau").datasets[0]
    body = ds.request_body()
    assert body["dataset"]["owner"] == "tax-bureau"
    assert "offerIds" not in body["dataset"]
    assert body["offers"][0]["assigner"] == "tax-bureau"
    assert body["source"] == {"kind": "csv", "path": str(space_dir / "data" / "tax.csv")}


def test_toml_syntax_error_line(space_dir: Path) -> None:
    path, _ = write(space_dir, '[space]\nname = "t"\nbase_port = = 3\n')
    with pytest.raises(SpaceConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:3: ")


def test_unknown_key_in_node(space_dir: Path) -> None:
    text = GOOD_HEAD + TAX + '\n[[node]]\nname = "court"\nrolls = ["provider"]  # <-\n'
    fails_at(space_dir, text, "node 'court': unknown key 'rolls'", "allowed:")


def test_unknown_key_in_space(space_dir: Path) -> None:
    text = GOOD_HEAD.replace('dir = "out"', 'dir = "out"\nbase-port = 3  # <-')
    fails_at(space_dir, text, "[space]: unknown key 'base-port'")


def test_unknown_top_level_key(space_dir: Path) -> None:
    fails_at(space_dir, 'owner = "me"  # <-\n' + GOOD_HEAD, "top level: unknown key 'owner'")


def test_bad_role(space_dir: Path) -> None:
    text = GOOD_HEAD + '\n[[node]]\nname = "bank-a"\nroles = ["consumer", "lender"]  # <-\n'
    fails_at(space_dir, text, "unknown role 'lender'")


def test_duplicate_node_name(space_dir: Path) -> None:
    text = GOOD_HEAD + TAX + '\n[[node]]\nname = "tax-bureau"  # <-\nroles = ["consumer"]\n'
    err = fails_at(space_dir, text, "duplicate node name 'tax-bureau'")
    assert "first at line 11" in str(err)


def test_two_operators(space_dir: Path) -> None:
    text = GOOD_HEAD + '\n[[node]]\nname = "other"\nroles = ["operator", "provider"]  # <-\n'
    fails_at(space_dir, text, "exactly one operator", "'city-centre'")


def test_no_operator(space_dir: Path) -> None:
    text = '[space]\nname = "t"\n\n[[node]]  # <-\nname = "a-node"\nroles = ["provider"]\n'
    fails_at(space_dir, text, "no node has the role 'operator'")


def test_missing_dataset_file(space_dir: Path) -> None:
    text = GOOD_HEAD + TAX.replace(
        'file = "datasets/tax.json"', 'file = "datasets/nope.json"  # <-'
    )
    fails_at(space_dir, text, "no such file 'datasets/nope.json'")


def test_missing_source_file(space_dir: Path) -> None:
    text = GOOD_HEAD + TAX.replace('path = "data/tax.csv" }', 'path = "data/gone.csv" }  # <-')
    fails_at(space_dir, text, "source.path", "no such file 'data/gone.csv'")


def test_missing_offer_file(space_dir: Path) -> None:
    text = GOOD_HEAD + TAX.replace(
        'offers = ["policies/tax-score.json"]', 'offers = ["x.json"]  # <-'
    )
    fails_at(space_dir, text, "no such file 'x.json'")


def test_unknown_source_kind_and_sqlite_without_table(space_dir: Path) -> None:
    text = GOOD_HEAD + TAX.replace('kind = "csv"', 'kind = "xlsx"').replace(
        "source = {", "# <-\nsource = {"
    )
    # the marker sits on its own line above `source`, so the expected line is the next one
    path, marker = write(space_dir, text)
    with pytest.raises(SpaceConfigError) as info:
        load_config(path)
    assert info.value.line == marker + 1
    assert "csv, parquet, sqlite" in str(info.value)
    text = GOOD_HEAD + TAX.replace(
        'source = { kind = "csv", path = "data/tax.csv" }',
        'source = { kind = "sqlite", path = "data/court.sqlite" }  # <-',
    )
    fails_at(space_dir, text, "needs table")


def test_dataset_on_a_non_provider(space_dir: Path) -> None:
    text = GOOD_HEAD + TAX.replace('roles = ["provider"]', 'roles = ["consumer"]').replace(
        "[[node.dataset]]", "[[node.dataset]]  # <-"
    )
    fails_at(space_dir, text, "only a node with the role 'provider' publishes datasets")


def test_second_dataset_error_points_at_its_own_table(space_dir: Path) -> None:
    text = (
        GOOD_HEAD
        + TAX
        + """
[[node.dataset]]
file = "datasets/dishonest.json"
source = { kind = "csv", path = "data/dishonest.csv" }
bogus = 1  # <-
offers = ["policies/open-data.json"]
"""
    )
    fails_at(space_dir, text, "dataset #2", "unknown key 'bogus'")


def test_owner_mismatch(space_dir: Path) -> None:
    doc = json.loads((space_dir / "datasets" / "tax.json").read_text())
    doc["owner"] = "court"
    (space_dir / "datasets" / "tax.json").write_text(json.dumps(doc))
    text = GOOD_HEAD + TAX.replace('file = "datasets/tax.json"', 'file = "datasets/tax.json" # <-')
    fails_at(space_dir, text, "says owner 'court'", "'tax-bureau'")


def test_grade_floor_refused_before_start(space_dir: Path) -> None:
    doc = json.loads((space_dir / "datasets" / "tax.json").read_text())
    doc["tier"] = "unconditional"  # tax_paid has grade 3
    (space_dir / "datasets" / "tax.json").write_text(json.dumps(doc))
    text = GOOD_HEAD + TAX.replace('file = "datasets/tax.json"', 'file = "datasets/tax.json" # <-')
    fails_at(space_dir, text, "tier 'unconditional'", "tax_paid")


def test_bad_offer_points_at_offers(space_dir: Path) -> None:
    offer = json.loads((space_dir / "policies" / "tax-score.json").read_text())
    offer["permission"][0]["constraint"][0]["leftOperand"] = "spatial"
    (space_dir / "policies" / "tax-score.json").write_text(json.dumps(offer))
    text = GOOD_HEAD + TAX.replace("offers = [", "offers = [  # <-\n  ").replace(
        '.json"]', '.json"\n]'
    )
    fails_at(space_dir, text, "unknown left operand 'spatial'")


def test_offer_invalid_json(space_dir: Path) -> None:
    (space_dir / "policies" / "tax-score.json").write_text("{not json")
    text = GOOD_HEAD + TAX.replace('offers = ["', '# <-\noffers = ["')
    path, marker = write(space_dir, text)
    with pytest.raises(SpaceConfigError, match="not valid JSON") as info:
        load_config(path)
    assert info.value.line == marker + 1


def test_settings_owned_by_the_space(space_dir: Path) -> None:
    text = (
        GOOD_HEAD + '\n[[node]]\nname = "b1"\nroles = ["consumer"]\nsettings = { port = 1 }  # <-\n'
    )
    fails_at(space_dir, text, "settings.port is set by the space")


def test_invalid_node_setting(space_dir: Path) -> None:
    text = GOOD_HEAD + '\n[[node]]\nname = "b1"\nroles = ["consumer"]\n[node.settings]  # <-\n'
    text += 'log_level = "loud"\n'
    fails_at(space_dir, text, "invalid settings", "log_level")


@pytest.mark.parametrize("value", ["80", "-1", "true", '"x"', "70000"])
def test_bad_base_port(space_dir: Path, value: str) -> None:
    text = GOOD_HEAD.replace("base_port = 0", f"base_port = {value}  # <-")
    fails_at(space_dir, text, "base_port")


def test_duplicate_port(space_dir: Path) -> None:
    text = GOOD_HEAD.replace('roles = ["operator"]', 'roles = ["operator"]\nport = 19100')
    text += '\n[[node]]\nname = "b1"\nroles = ["consumer"]\nport = 19100  # <-\n'
    fails_at(space_dir, text, "port 19100 is also 'city-centre'")


def test_bad_node_name(space_dir: Path) -> None:
    text = GOOD_HEAD + '\n[[node]]\nname = "Tax Bureau"  # <-\nroles = ["provider"]\n'
    fails_at(space_dir, text, "node name 'Tax Bureau'")


def test_missing_space_table(space_dir: Path) -> None:
    path, _ = write(space_dir, '[[node]]\nname = "a1"\nroles = ["operator"]\n')
    with pytest.raises(SpaceConfigError, match=r"a \[space\] table is required"):
        load_config(path)


def test_unreadable_config(tmp_path: Path) -> None:
    with pytest.raises(SpaceConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_error_line_follows_the_nth_node(space_dir: Path, index: int) -> None:
    nodes = [
        ("city-centre", '["operator"]'),
        ("n1", '["consumer"]'),
        ("n2", '["consumer"]'),
        ("n3", '["consumer"]'),
    ]
    text = '[space]\nname = "t"\n'
    for i, (name, roles) in enumerate(nodes):
        text += f'\n[[node]]\n# node {i}\nname = "{name}"\n'
        text += f"roles = {roles}\n"
        if i == index:
            text += "colour = 1  # <-\n"
    fails_at(space_dir, text, "unknown key 'colour'")


def test_tls_flags_load(space_dir: Path) -> None:
    flags = "tls = true\nclient_certs = true"
    path, _ = write(space_dir, GOOD_HEAD.replace("base_port = 0", flags))
    config = load_config(path)
    assert (config.tls, config.client_certs) == (True, True)
    assert (load_config(write(space_dir, GOOD_HEAD)[0]).tls) is False


def test_client_certs_need_tls(space_dir: Path) -> None:
    text = GOOD_HEAD.replace("base_port = 0", "client_certs = true  # <-")
    fails_at(space_dir, text, "client_certs needs tls = true")


def test_tls_is_a_boolean(space_dir: Path) -> None:
    fails_at(space_dir, GOOD_HEAD.replace("base_port = 0", 'tls = "yes"  # <-'), "true or false")


def test_tls_files_are_the_spaces_in_a_tls_space(space_dir: Path) -> None:
    text = GOOD_HEAD.replace("base_port = 0", "tls = true")
    text += '\n[[node]]\nname = "b1"\nroles = ["consumer"]\n'
    text += 'settings = { tls_cert = "a.pem", tls_key = "a.key" }  # <-\n'
    fails_at(space_dir, text, "settings.tls_cert is set by the space")
