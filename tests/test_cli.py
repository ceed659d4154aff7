"""dcgan_tf/cli.py: every CLI's flags come from a commented dataclass and read back into the same values."""

import dataclasses
import glob
import os

import pytest
from absl import flags

from dcgan_tf import cli
from dcgan_tf.config import Config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Example:
    """A CLI's own settings, written as the CLIs write theirs."""

    # A section comment: not anyone's help.
    count: int = 3  # how many
    names: list[str] | None = None  # a help text too long for one line,
                                    # continued under it
    ids: list[int] | None = None  # integers
    grid: tuple[float, ...] = (1e-05, 0.1, 1.0)  # numbers
    from_: float = 0.5  # a Python keyword as a flag name
    mode: str = "a"  # a or b
    verbose: bool | None = None  # unset, true or false


def parsed(cls=Example, argv=(), **define):
    """Fresh flags of `cls` (not absl's global FLAGS), parsed from argv."""
    values = flags.FlagValues()
    cli.define_flags(cls, flag_values=values, **define)
    values(["program", *argv])
    return values


def test_help_is_the_trailing_comment_with_its_continuation_lines():
    assert cli.field_help(Example) == {
        "count": "how many", "names": "a help text too long for one line, continued under it", "ids": "integers",
        "grid": "numbers", "from_": "a Python keyword as a flag name", "mode": "a or b",
        "verbose": "unset, true or false"}


def test_flags_read_back_as_the_fields_types():
    values = parsed(argv=["--ids=1,2", "--from=2", "--mode=b", "--names=x,y", "--grid=0.5,2", "--noverbose"],
                    choices={"mode": ["a", "b"]})
    assert cli.read_flags(Example, values) == Example(names=["x", "y"], ids=[1, 2], grid=(0.5, 2.0), from_=2.0,
                                                      mode="b", verbose=False)
    defaults = parsed()
    assert cli.read_flags(Example, defaults) == Example()
    assert defaults["grid"].default_as_str == "'1e-05,0.1,1'"  # as the flag showed it before it was a field
    assert defaults.find_module_defining_flag("count") != cli.__name__  # --help lists it under its CLI


def test_bad_values_are_refused_naming_the_flag():
    with pytest.raises(cli.FlagError, match=r"--ids=1,x must be comma-separated integers"):
        cli.read_flags(Example, parsed(argv=["--ids=1,x"]))
    with pytest.raises(flags.IllegalFlagValueError):
        parsed(argv=["--mode=c"], choices={"mode": ["a", "b"]})
    with pytest.raises(ValueError, match=r"Example has no fields \['colour'\]"):
        cli.define_flags(Example, ["count", "colour"], flag_values=flags.FlagValues())


def test_every_config_field_is_a_flag_with_its_default_and_its_comment():
    values = flags.FlagValues()
    cli.define_config_flags(flag_values=values)
    values(["program"])
    assert set(values) == set(cli.CONFIG_FLAGS) == {f.name for f in dataclasses.fields(Config)} - {"resolved", "initialized_from"}
    assert cli.config_from_flags(values) == Config()
    assert values["beta1"].help == 'paper: beta1 0.5 (0.9 "resulted in training oscillation and instability")'
    assert all(values[name].help == cli.field_help(Config)[name] for name in cli.CONFIG_FLAGS)


def test_a_cli_takes_some_config_fields_with_its_own_defaults():
    values = flags.FlagValues()
    cli.define_config_flags(("dataset", "ngf"), defaults={"ngf": 32}, helps={"dataset": "what to time"},
                            flag_values=values)
    values(["program", "--dataset=mnist"])
    assert values["dataset"].help == "what to time" and values["ngf"].help == cli.field_help(Config)["ngf"]
    assert cli.config_from_flags(values, ("dataset", "ngf"), base=Config(train_steps=1)) == \
        Config(dataset="mnist", ngf=32, train_steps=1)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.cfg"))),
                         ids=os.path.basename)
def test_flagfiles_parse_into_the_config_test_configs_checks(path):
    from test_configs import read_flagfile  # the paper's values are checked on what this reader gives

    values = flags.FlagValues()
    cli.define_config_flags(flag_values=values)
    values(["program", f"--flagfile={path}"])
    assert cli.config_from_flags(values) == read_flagfile(path)
