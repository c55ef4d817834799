import pytest
from torch import nn

from lightning_init.rules import InitRule, as_rules, check_all_match, first_match


def _model():
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()),  # "backbone" = 0
        nn.Flatten(),
        nn.Linear(4, 2),
    )


def test_name_glob_covers_subtree_and_type_matches_mro():
    r = InitRule(name="0", scheme="skip")
    assert r.matches("0.0", nn.Conv2d(1, 1, 1))
    assert not r.matches("2", nn.Linear(1, 1))
    assert InitRule(type="_ConvNd", scheme="zeros").matches("x", nn.Conv2d(1, 1, 1))
    assert InitRule(type="torch.nn.modules.linear.Linear").matches("x", nn.Linear(1, 1))
    assert not InitRule(type="Linear", name="a.*").matches("b.c", nn.Linear(1, 1))


def test_first_match_wins():
    rules = [InitRule(type="Linear", scheme="zeros"), InitRule(name="*", scheme="ones")]
    assert first_match(rules, "2", nn.Linear(1, 1)).scheme == "zeros"
    assert first_match(rules, "0.0", nn.Conv2d(1, 1, 1)).scheme == "ones"


def test_dicts_become_rules_and_bad_keys_are_refused():
    assert as_rules([{"name": "x", "scheme": "normal", "std": 0.1}]) == [InitRule(name="x", scheme="normal", std=0.1)]
    with pytest.raises(
        ValueError, match=r"`rules\[0\]` has no key 'schema': valid keys are 'name', .*Did you mean 'scheme'\?"
    ):
        as_rules([{"name": "x", "schema": "normal"}])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scheme": "normal"}, "needs `name` and/or `type`"),
        ({"name": "x", "scheme": "skipp"}, r"Did you mean 'skip'\?"),
        ({"name": "x", "scheme": "skip", "std": 1.0}, "takes no parameters"),
        ({"name": "x", "scheme": "normal", "std": -2.0}, r"`std` must be a finite number > 0, got -2.0"),
    ],
)
def test_bad_rules(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InitRule(**kwargs)


def test_rule_matching_nothing_names_rule_and_layers():
    layers = [(n, m) for n, m in _model().named_modules() if next(m.parameters(recurse=False), None) is not None]
    with pytest.raises(
        ValueError, match=r"InitRule\(name='head', .*matches no layer.*'0.0' \(Conv2d\), '2' \(Linear\)"
    ):
        check_all_match([InitRule(name="head", scheme="zeros")], layers)
