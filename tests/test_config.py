"""Config loading: typed values, errors that name the key and the allowed values, resolved paths."""

from pathlib import Path

import pytest

from srpipe.config import Config, dump_config, load_config
from srpipe.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_demo_config_loads_with_relative_paths_resolved_against_the_file():
    cfg = load_config(Path(__file__).parents[1] / "configs" / "demo.toml")
    assert Path(cfg.plan.aoi).is_absolute() and Path(cfg.plan.aoi).exists()
    assert cfg.plan.region == "demo"
    assert cfg.source.time_interval == ("2016-05-01", "2016-10-31")


def test_unknown_key_names_the_key_and_the_allowed_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'curate.n_frame'.*allowed keys:.*n_frames"):
        load_config(write(tmp_path, "[curate]\nn_frame = 4\n"))


def test_unknown_section_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'.*allowed keys:.*train"):
        load_config(write(tmp_path, "[trian]\nepochs = 4\n"))


def test_bad_choice_lists_the_allowed_values(tmp_path):
    with pytest.raises(
        ConfigError, match=r"'model.upscaler' = 'bilinear'; allowed values: 'pixel_shuffle', 'transposed'"
    ):
        load_config(write(tmp_path, "[model]\nupscaler = 'bilinear'\n"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[train]\nepochs = 'many'\n", "'train.epochs' must be an integer"),
        ("[train]\nlr = -1.0\n", "'train.lr' must be > 0"),
        ("[curate]\nsplit = [0.5, 0.2, 0.2]\n", "'curate.split' must sum to 1"),
        ("[source]\ntime_interval = ['2016-05-01']\n", "'source.time_interval' must be a list of 2"),
        ("workers = true\n", "'workers' must be an integer"),
        ("[infer]\nn_frames = 9\n", "'infer.n_frames' (9) exceeds 'curate.n_frames' (8)"),
        ("[infer]\nself_ensemble = true\ninterval = 0.905\n", "'infer.interval' holds 0.905; allowed: 0.50 to 0.99"),
        ("[infer]\nself_ensemble = true\ninterval = [0.9, 1.0]\n", "'infer.interval' holds 1.0; allowed"),
        ("[infer]\ninterval = 0.9\n", "'infer.interval' needs 'infer.self_ensemble' = true"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert message in str(err.value)


def test_invalid_toml_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="c.toml is not valid TOML"):
        load_config(write(tmp_path, "[train\n"))


def test_dumped_config_loads_back_equal(tmp_path):
    cfg = load_config(write(tmp_path, "[model]\nchannels = 16\n[curate]\npercentiles = [2, 98]\n"))
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg
    assert again.curate.percentiles == (2.0, 98.0)
    assert isinstance(again, Config)


@pytest.mark.parametrize(
    ("text", "dates"),
    [('dates = "all"', "all"), ('dates = "latest"', "latest"), ('dates = ["2016-06-01", "2016-07-01"]', None)],
)
def test_infer_dates_take_all_latest_or_a_list_of_dates(tmp_path, text, dates):
    cfg = load_config(write(tmp_path, f"[infer]\n{text}\n"))
    assert cfg.infer.dates == (dates or ("2016-06-01", "2016-07-01"))
    assert load_config(write(tmp_path, dump_config(cfg))).infer.dates == cfg.infer.dates


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('dates = "some"', r"'infer.dates' = 'some'; allowed: \"latest\", \"all\" or a list of dates"),
        ('dates = ["2016-13-01"]', r"'infer.dates\[0\]' = '2016-13-01' is not a YYYY-MM-DD date"),
        ("dates = 3", r"'infer.dates' must be a string, got 3 or config key 'infer.dates' must be a list"),
        ("min_frames = 9", r"'infer.min_frames' must be in \[1, infer.n_frames=8\], got 9"),
    ],
)
def test_bad_infer_dates_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, f"[infer]\n{text}\n"))


def test_stac_signing_and_label_collection_keys_are_checked_and_resolved_against_the_file(tmp_path):
    cfg = load_config(write(tmp_path, '[source]\nname = "stac"\nvhr_stac = "labels/collection.json"\n'))
    assert cfg.source.vhr_stac == str((tmp_path / "labels" / "collection.json").resolve())
    assert cfg.source.label_rasters == cfg.source.vhr_stac and cfg.source.stac_sign == ""
    url = "https://example.org/labels/collection.json"
    assert load_config(write(tmp_path, f'[source]\nvhr_stac = "{url}"\n')).source.vhr_stac == url
    with pytest.raises(ConfigError, match=r"'source.stac_sign' = 'pc'; allowed values: '', 'planetary-computer'"):
        load_config(write(tmp_path, '[source]\nstac_sign = "pc"\n'))
    with pytest.raises(ConfigError, match=r"'source.vhr_files' and 'source.vhr_stac' both name the labels"):
        load_config(write(tmp_path, '[source]\nvhr_files = "ortho"\nvhr_stac = "c.json"\n'))
