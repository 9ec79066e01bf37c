"""
Check an evaluation's results.json (written by evaluate.py) for completeness and sanity:
every task section present, or skipped with a reason; metrics within their ranges; no NaN or
infinity (evaluate.py writes non-finite numbers as null, so a null metric fails too, except
where null has a documented meaning); sample counts as asked. One line per check: PASS, FAIL, or
SKIP for a task or part that was skipped with a reason (a FAIL with --require TASKS, for tasks
that must have run). The exit status is 1 when any check fails.

$ python verify_evaluation.py --out_dir out/backpack_tiny
$ python verify_evaluation.py --out_dir out/backpack_tiny --require loss,translation,wordsim,bli
"""
import argparse
import json
import math
import sys
from collections import namedtuple
from fnmatch import fnmatchcase
from pathlib import Path

from backpacks import cli
from backpacks.eval.context import SkipTask, read_test_pairs
from backpacks.eval.tasks import TASKS

INF = math.inf
MISSING = object()
TOLERANCE = 1e-6  # float32 cosines and the like may overshoot their bounds by rounding

# Range rules: in every entry of the section matched by `each` (results, not skipped), the `field`
# must be a number within [low, high]. Paths are dotted; each part is a shell pattern matched
# against keys ('*' matches any key, and any list element). A field pattern must match at least
# once per entry unless optional; null_ok: null is legitimate there (e.g. Spearman rho of
# constant input is undefined, a language with no val token has no loss).
Rule = namedtuple("Rule", "section each field what low high optional null_ok", defaults=(False, False))
RULES = [
    Rule("loss", "all", "loss", "held-out loss", 0, INF),
    Rule("loss", "all", "perplexity", "held-out perplexity", 1, INF),
    Rule("loss", "*", "loss", "per-language loss (null: no token of that language)", 0, INF, True, True),
    Rule("loss", "*", "perplexity", "per-language perplexity (null: no token of that language)", 1, INF, True, True),
    Rule("translation", "*-*.*", "bleu.score", "corpus BLEU", 0, 100),
    Rule("translation", "*-*.*", "chrf.score", "corpus chrF", 0, 100),
    # null: sacreBLEU's bootstrap failed on the output (its ci95_note says how)
    Rule("translation", "*-*.*", "bleu.ci95.*", "corpus BLEU 95% interval", 0, 100, True, True),
    Rule("translation", "*-*.*", "chrf.ci95.*", "corpus chrF 95% interval", 0, 100, True, True),
    Rule("translation", "*-*.*", "sentence_bleu_nltk.*", "NLTK sentence BLEU statistics", 0, INF),
    Rule("translation", "*-*.*", "sentence_bleu_nltk.mean", "NLTK sentence BLEU mean", 0, 1),
    Rule("translation", "*-*.*", "sentence_bleu_nltk.max", "NLTK sentence BLEU max", 0, 1),
    Rule("translation", "*-*.*", "exact_match", "exact match", 0, 1),
    Rule("translation", "*-*.*", "word_accuracy", "word accuracy", 0, 1),
    Rule("translation", "*-*.*", "char_accuracy", "character accuracy", 0, 1),
    Rule("translation", "*-*.*", "seconds", "translation time", 0, INF),
    Rule("wordsim", "sets.*", "coverage", "word-similarity coverage", 0, 1),
    Rule("wordsim", "sets.*", "spearman.*.rho", "Spearman rho (null: constant input)", -1, 1, False, True),
    Rule("wordsim", "sets.*", "spearman.*.p_value", "Spearman p-value (null: constant input)", 0, 1, False, True),
    Rule("wordsim", "sets.*", "spearman.*.in_corpus.rho", "Spearman rho, in-corpus pairs", -1, 1, True, True),
    Rule("wordsim", "sets.*", "spearman.*.in_corpus.p_value", "Spearman p-value, in-corpus pairs", 0, 1, True, True),
    Rule("wordsim", "sets.*", "spearman.*.rho_ci95.*", "Spearman rho 95% interval", -1, 1, True, True),
    Rule("bli", "*-*", "coverage", "BLI coverage", 0, 1),
    Rule("bli", "*-*.*", "*.ci95.p@*.*", "BLI precision at k, 95% interval", 0, 1, True),
    Rule("bli", "*-*.*", "cosine.p@*", "BLI precision at k, cosine", 0, 1),
    Rule("bli", "*-*.*", "csls.p@*", "BLI precision at k, CSLS", 0, 1),
    Rule("sentence", "*.*", "recall@1_*", "sentence retrieval recall@1", 0, 1),
    Rule("sentence", "*.*", "chance_recall@1", "sentence retrieval chance level", 0, 1),
    Rule("sentence", "*.*", "pair_cosine.mean", "translation-pair cosine", -1, 1),
    Rule("sentence", "*.*", "derangement_cosine.mean", "random-pair cosine", -1, 1),
    Rule("sentence", "*.*", "*_cosine.std", "cosine standard deviations", 0, 1),
    Rule("senses", "alpha_entropy", "mean", "sense-weight entropy (nats)", 0, INF),
    Rule("senses", "alpha_entropy", "mean_normalised", "normalised sense-weight entropy", 0, 1),
    Rule("senses", "alpha_entropy", "per_sense_normalised.*", "per-sense normalised entropy", 0, 1),
    Rule("senses", "translation_pair_cosines", "per_sense_*_cosine.*", "per-sense translation-pair cosines", -1, 1),
]
# Parts of a section that are each either results (the key shown) or {"skipped": reason}.
SUBENTRIES = [("wordsim", "sets.*", "spearman"), ("bli", "en-fr", "queries"), ("bli", "fr-en", "queries"),
              ("senses", "top_tokens", None), ("senses", "alpha_entropy", "mean"),
              ("senses", "translation_pair_cosines", "pairs")]


def expand(node, path, prefix=""):
    """[(full dotted path, value)] of every match of a dotted path with '*' wildcards; a named part
    that holds a plain value where the path goes on is a TypeError (results of the wrong shape), except
    null, which is that value (evaluate.py writes what it could not compute as null)."""
    if not path:
        return [(prefix, node)]
    part, _, rest = path.partition(".")
    named = not any(c in part for c in "*?[")
    if named and rest and isinstance(node, dict) and part in node and node[part] is None:
        return [(f"{prefix}.{part}" if prefix else part, None)]
    if named and rest and isinstance(node, dict) and part in node and not isinstance(node[part], (dict, list)):
        raise TypeError(f"{prefix + '.' if prefix else ''}{part} is {node[part]!r:.40}, not an object")
    if isinstance(node, dict):
        keys = [k for k in node if fnmatchcase(k, part)]
        return [m for k in keys for m in expand(node[k], rest, f"{prefix}.{k}" if prefix else k)]
    if isinstance(node, list) and part == "*":
        return [m for i, v in enumerate(node) for m in expand(v, rest, f"{prefix}[{i}]")]
    return []


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def has_results(section):
    return isinstance(section, dict) and "skipped" not in section


class Checker:
    """Collects PASS/FAIL/SKIP lines."""

    def __init__(self):
        self.failed = 0
        self.total = 0
        self.skipped = 0

    def check(self, ok, what):
        self.total += 1
        self.failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} {what}")

    def skip(self, reason, where):
        """A part skipped with a reason is a SKIP; without a non-empty reason, a FAIL."""
        if isinstance(reason, str) and reason.strip():
            self.skipped += 1
            print(f"SKIP {where}: skipped, reason: {reason!r}")
        else:
            self.check(False, f"{where}: skipped, reason: {reason!r} (a skip needs a reason)")


def check_sections(results, checker, required=()):
    """Every task section is an object with results, or skipped with a non-empty reason; a required
    task must have results."""
    for task in (*TASKS, "run"):
        section = results.get(task)
        if not isinstance(section, dict):
            checker.check(False, f"{task}: section missing" + (f" (found {section!r:.40})" if task in results else ""))
        elif "skipped" in section and (task in required or task == "run"):
            checker.check(False, f"{task}: skipped although required, reason: {section['skipped']!r}")
        elif "skipped" in section:
            checker.skip(section["skipped"], task)
        else:
            checker.check(len(section) > 0, f"{task}: present")


def check_subentries(results, checker):
    for section, path, key in SUBENTRIES:
        if not has_results(results.get(section)):
            continue
        for where, entry in expand(results[section], path, section):
            if isinstance(entry, dict) and "skipped" in entry:
                checker.skip(entry["skipped"], where)
            else:
                ok = isinstance(entry, list) if key is None else isinstance(entry, dict) and key in entry
                checker.check(ok and len(entry) > 0, f"{where}: has results" + (f" ({key})" if key else ""))


def non_finite_paths(node, prefix=""):
    """Paths of NaN / infinite numbers anywhere in node."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in non_finite_paths(v, f"{prefix}.{k}" if prefix else k)]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in non_finite_paths(v, f"{prefix}[{i}]")]
    return [prefix] if isinstance(node, float) and not math.isfinite(node) else []


def check_finite(results, checker):
    bad = non_finite_paths(results)
    checker.check(not bad, "no NaN or infinity anywhere" + (f": {', '.join(bad[:5])}" if bad else ""))


def rule_values(section, rule):
    """[(path, value)] of the rule's field in each entry with results; a missing field is MISSING."""
    values = []
    for where, entry in expand(section, rule.each, rule.section):
        if not isinstance(entry, dict) or "skipped" in entry:
            continue
        found = expand(entry, rule.field, where)
        if not found and not rule.optional:
            found = [(f"{where}.{rule.field}", MISSING)]
        values += found
    return values


def check_rule(results, rule, checker):
    """One line per rule: all its values are numbers within [low, high] (or an allowed null)."""
    section = results.get(rule.section)
    if not has_results(section):
        return
    values = rule_values(section, rule)
    if not values and not any(c in rule.each for c in "*?[") and not expand(section, rule.each):
        values = [(f"{rule.section}.{rule.each}", MISSING)]  # a named entry (loss.all) must be there, or be skipped
    if not values:
        return  # no entry with results: the section and sub-entry checks report why
    bad = [f"{path}={'missing' if value is MISSING else repr(value)}" for path, value in values
           if not (value is None and rule.null_ok)
           and not (is_number(value) and rule.low - TOLERANCE <= value <= rule.high + TOLERANCE)]
    interval = f"[{rule.low}, {rule.high}]" if rule.high < INF else f">= {rule.low}"
    checker.check(not bad, f"{rule.what}: {interval} ({len(values)} values)"
                  + (f": out of range, missing or not a number: {', '.join(bad[:5])}" if bad else ""))


def available_test_pairs(translation):
    """Number of usable test pairs, as evaluate.py counts them, or (None, reason)."""
    if is_number(translation.get("samples_available")):
        return translation["samples_available"], None
    test_set = str(translation.get("test_set", ""))
    try:
        if test_set.endswith(".{en,fr}"):
            pairs, _ = read_test_pairs(test_set[:-len(".{en,fr}")], None)
        else:
            pairs, _ = read_test_pairs(None, Path(test_set).parent)
    except SkipTask as e:
        return None, str(e)
    return len(pairs), None


def check_translation_counts(results, checker):
    translation = results.get("translation")
    if not has_results(translation):
        return
    asked, used = translation.get("samples_asked"), translation.get("samples_used")
    available, reason = available_test_pairs(translation)
    if available is None:
        checker.check(used == asked, f"translation samples used {used} == asked {asked} "
                                     f"(available pairs unknown: {reason})")
    else:
        checker.check(used == min(asked, available),
                      f"translation samples used {used} == min(asked {asked}, available {available})")
    for direction in ("en-fr", "fr-en"):
        decodings = translation.get(direction)
        checker.check(isinstance(decodings, dict) and "greedy" in decodings, f"translation {direction} greedy present")
        for name, entry in (decodings or {}).items():
            n = entry.get("n") if isinstance(entry, dict) else None
            checker.check(n == used, f"translation {direction} {name}: {n} sentences scored == samples used {used}")


def check_loss_consistency(results, checker):
    loss = results.get("loss")
    if not has_results(loss) or not isinstance(loss.get("all"), dict):
        return
    entry = loss["all"]
    checker.check(loss.get("split") == "test", f"loss on the test split, not val (which chose the checkpoint): "
                                               f"{loss.get('split')!r}")
    checker.check(is_number(entry.get("tokens")) and entry["tokens"] > 0, f"{loss.get('split')} loss over {entry.get('tokens')} tokens")
    if is_number(entry.get("loss")) and is_number(entry.get("perplexity")):
        expected = math.exp(entry["loss"])
        checker.check(math.isclose(entry["perplexity"], expected, rel_tol=1e-6),
                      f"perplexity {entry['perplexity']:.4g} == exp(loss) {expected:.4g}")


def check_coverage_counts(results, checker):
    """coverage == used / total, with used <= total, wherever a coverage is reported."""
    spots = [("wordsim", "sets.*", "pairs_used", "pairs"), ("bli", "*-*", "queries", "dictionary_sources")]
    for section, path, used_key, total_key in spots:
        if not has_results(results.get(section)):
            continue
        for where, entry in expand(results[section], path, section):
            if not isinstance(entry, dict) or used_key not in entry:
                continue
            used, total = entry[used_key], entry[total_key]
            ok = is_number(used) and is_number(total) and 0 <= used <= total and \
                math.isclose(entry.get("coverage", -1), used / max(1, total), abs_tol=1e-9)
            checker.check(ok, f"{where}: {used_key} {used} <= {total_key} {total}, coverage {entry.get('coverage')!r:.8}")


def check_sentence_counts(results, checker):
    sentence = results.get("sentence")
    if not has_results(sentence):
        return
    asked, used = sentence.get("pairs_asked"), sentence.get("pairs_used")
    checker.check(is_number(used) and is_number(asked) and 2 <= used <= asked,
                  f"sentence pairs used {used} within [2, asked {asked}]")
    checker.check("backbone" in sentence, "sentence backbone states present")
    if results.get("run", {}).get("model_type") == "backpack":
        checker.check("backpack_output" in sentence, "sentence Backpack output states present")
    counts = [(where, n) for where, n in expand(sentence, "*.*.n", "sentence")]
    checker.check(bool(counts) and all(n == used for _, n in counts),
                  f"sentence: every pooling scored {used} pairs ({len(counts)} entries)")


def check_records(results, checker):
    """Every task with results records what computed it, and all from the checkpoint of "run"
    (evaluate.py merges only results of one checkpoint into a results.json)."""
    computed = results.get("computed")
    computed = computed if isinstance(computed, dict) else {}
    tasks = [task for task in TASKS if has_results(results.get(task))]
    unrecorded = [task for task in tasks if not isinstance(computed.get(task), dict)]
    checker.check(not unrecorded, "every task with results records its checkpoint and settings"
                  + (f": not {', '.join(unrecorded)}" if unrecorded else ""))
    others = [task for task in tasks if task not in unrecorded and
              computed[task].get("checkpoint_sha256") != results["run"].get("checkpoint_sha256")]
    checker.check(not others, "every task computed from the checkpoint of 'run'"
                  + (f": not {', '.join(others)}" if others else ""))


def verify(results, required=()):
    """Run every check, printing one line each; returns the number of failures. A check that meets
    a value of the wrong kind (a string where a section should be) fails instead of crashing."""
    checker = Checker()
    checks = [lambda: check_sections(results, checker, required), lambda: check_subentries(results, checker),
              lambda: check_finite(results, checker), lambda: check_records(results, checker)]
    checks += [lambda rule=rule: check_rule(results, rule, checker) for rule in RULES]
    checks += [lambda check=check: check(results, checker) for check in
               (check_loss_consistency, check_translation_counts, check_coverage_counts, check_sentence_counts)]
    for check in checks:
        try:
            check()
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as e:
            checker.check(False, f"results.json has an unexpected structure ({type(e).__name__}: {e})")
    print(f"verify_evaluation: {checker.total} checks, {checker.failed} failing, {checker.skipped} skipped")
    return checker.failed


def load_results(out_dir):
    path = Path(out_dir) / "eval" / "results.json"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found (run evaluate.py --out_dir {out_dir} first)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise SystemExit(f"error: {path} is not valid JSON: {e}")
    if not isinstance(results, dict):
        raise SystemExit(f"error: {path} does not hold a JSON object")
    return results


def main(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False)
    p.add_argument("--out_dir", required=True, help="directory whose eval/results.json is checked")
    p.add_argument("--require", default="", metavar="TASKS",
                   help=f"comma-separated tasks that must have run (a skip fails): a subset of {','.join(TASKS)}")
    args = p.parse_args(argv)
    cli.check_directory(args.out_dir, "--out_dir")
    required = [t.strip() for t in args.require.split(",") if t.strip()]
    unknown = [t for t in required if t not in TASKS]
    if unknown:
        cli.fail(f"--require names unknown task(s) {unknown}; choose from {','.join(TASKS)}")
    sys.exit(1 if verify(load_results(args.out_dir), required) else 0)


if __name__ == "__main__":
    main()
