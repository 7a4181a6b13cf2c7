"""The generalisation check: the study's decisive step.

The top-k ideas by validation PGR are re-run from their code — not their submitted predictions —
on the holdout half of the research testbed and on held-out testbeds, several seeds each, scored
with the operator key. The teacher-ablation control re-runs the same ideas on the research
testbed with the teacher's labels shuffled; an idea whose score does not move is flagged
`ignores_teacher`.

GENERALISATION_RULE is the flag's rule, stated as the report states it. The ideas checked are the
top-k of `ranked_ideas`: unflagged ones only (a shortcut is not a candidate winner), and ideas
whose predictions are identical counted once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from aar_ray.experiments import ExperimentSpec, record_experiment
from aar_ray.experiments.sweep import finish, submit_experiment
from aar_ray.forum import Result
from aar_ray.methods import parse_method
from aar_ray.scoring import read_operator_key, scorer_actor
from aar_ray.scoring.checks import same_predictions, scored_digests

DOES_NOT_GENERALISE = "does_not_generalise"
GENERALISATION_RULE = (
    "`does_not_generalise`: on at least one testbed of the check (the research testbed's holdout "
    "half or any held-out testbed) the idea's mean holdout PGR over seeds is more than "
    "`flag_drop` ({drop}) below its validation PGR, or no seed there was scored; `fails_on` "
    "names those testbeds.")

# two-sided 95% t quantiles by degrees of freedom; seeds are few, so a z of 1.96 would be too tight
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval."""
    if len(values) < 2:
        return (float(values[0]) if values else math.nan), math.nan
    sd = float(np.std(values, ddof=1))
    return float(np.mean(values)), _T95.get(len(values) - 1, 1.96) * sd / math.sqrt(len(values))


@dataclass
class RankedIdea:
    """One distinct answer on a testbed's leaderboard: its best result, and the results with the
    same predictions (or the same idea run again) collapsed into it, best first."""

    result: Result  # the best of `members`: the entry's idea, researcher, PGR, code and id
    members: list[Result] = field(default_factory=list)
    answers: dict[int, str] = field(default_factory=dict)  # seed -> digest of its predictions

    @property
    def flags(self) -> tuple[str, ...]:
        """The entry's flags: its result's, joined (sorted) by those of the collapsed results."""
        if len(self.members) <= 1:
            return self.result.flags
        return tuple(sorted({f for m in self.members for f in m.flags}))

    @property
    def same_as(self) -> list[str]:
        """The other ideas or researchers with this answer, as `label (researcher)`, each once;
        the entry's own runs again (more seeds of the same submission) are members, not listed."""
        own = (self.result.label, self.result.researcher)
        return list(dict.fromkeys(f"{m.label} ({m.researcher})" for m in self.members[1:]
                                  if (m.label, m.researcher) != own))


def _seed_digests(result: Result, digests: dict[str, str]) -> dict[int, str]:
    keys = {seed: f"{result.call_key}/seed{seed}" for seed in result.seeds}
    return {seed: digests[key] for seed, key in keys.items() if key in digests}


def _same_idea(entry: Result, result: Result) -> bool:
    """The same library method and parameters (deterministic per seed), or the same idea file
    of the same researcher run again."""
    return (entry.kind, entry.name) == (result.kind, result.name) and (
        not result.is_idea or entry.researcher == result.researcher)


def ranked_ideas(forum, testbed: str, home: str) -> list[RankedIdea]:
    """The campaign's results on `testbed`, best validation PGR first, one entry per distinct
    answer: a result with the same predictions as a better one (another researcher, another
    spelling of the same parameters) or the same idea run again is listed in that entry's
    `same_as`, not as an entry of its own. Flags of the collapsed results join the entry's."""
    digests = scored_digests(Path(home) / "sealed" / "audit.jsonl")
    entries: list[RankedIdea] = []
    for result in forum.leaderboard(testbed, limit=100_000):
        if result.pgr is None:
            continue
        answers = _seed_digests(result, digests)
        twin = next((e for e in entries if any(_same_idea(m, result) for m in e.members)
                     or same_predictions(e.answers, answers)), None)
        if twin is None:
            entries.append(RankedIdea(result, [result], answers))
            continue
        # the entry now answers for these seeds too: a later run of other seeds is matched on them
        twin.answers = {**answers, **twin.answers}
        twin.members.append(result)
    return entries


def top_ideas(forum, testbed: str, k: int, home: str) -> list[RankedIdea]:
    """The k best distinct unflagged ideas: the candidates for winner."""
    return [e for e in ranked_ideas(forum, testbed, home) if not e.flags][:k]


def fails_on(row: dict, testbeds: list[str], validation_pgr: float, drop: float) -> list[str]:
    """The testbeds where an idea's holdout PGR is more than `drop` below its validation PGR
    (or was not scored): GENERALISATION_RULE."""
    return [t for t in testbeds
            if not math.isfinite(row[f"{t}_holdout_pgr"]) or row[f"{t}_holdout_pgr"] < validation_pgr - drop]


def _spec_for(idea: Result, forum, config, testbed: str, seed: int) -> ExperimentSpec:
    home = str(Path(config.home).resolve())
    if idea.is_idea:
        code = forum.read_code(idea.code_ref)["code"]
        return ExperimentSpec(testbed, idea.name, seed, home, {}, config.student, config.teacher,
                              eval_split="holdout", code=code, num_gpus=config.experiment_gpus)
    name, params = parse_method(idea.name)
    return ExperimentSpec(testbed, name, seed, home, params, config.student, config.teacher,
                          eval_split="holdout", num_gpus=config.experiment_gpus)


def generalisation_check(config, forum, tracker, parent_run_id: str) -> list[dict]:
    scorer = scorer_actor(config.home, config.scorer, config.teacher, config.student)
    key = read_operator_key(config.home)
    testbeds = [config.testbed, *config.heldout_testbeds]
    ideas = top_ideas(forum, config.testbed, config.generalisation.top_k, config.home)
    specs = [(idea.result, _spec_for(idea.result, forum, config, testbed, seed))
             for idea in ideas for testbed in testbeds for seed in config.generalisation.seeds]
    if config.generalisation.teacher_ablation:  # the same runs on the research testbed, teacher shuffled
        specs += [(idea, replace(spec, shuffle_teacher=True)) for idea, spec in specs
                  if spec.testbed == config.testbed]
    jobs = [(idea, spec, submit_experiment(spec)) for idea, spec in specs]
    scores: dict[tuple[str, str, bool], list[float]] = {}
    for idea, spec, ref in jobs:
        result, score, error = finish(ref, scorer, "operator", spec, key)
        record_experiment(tracker, spec, result, score, "operator", error, parent_run_id,
                          extra_tags={"researcher": idea.researcher})
        if "pgr" in score:
            scores.setdefault((idea.id, spec.testbed, spec.shuffle_teacher), []).append(score["pgr"])
    table = []
    for entry in ideas:
        idea = entry.result
        row = {"idea": idea.label, "researcher": idea.researcher, "validation_pgr": idea.pgr,
               "same_as": ", ".join(entry.same_as)}
        for testbed in testbeds:
            mean, ci = mean_ci(scores.get((idea.id, testbed, False), []))
            row[f"{testbed}_holdout_pgr"], row[f"{testbed}_ci95"] = round(mean, 3), round(ci, 3)
        failed = fails_on(row, testbeds, idea.pgr, config.generalisation.flag_drop)
        row["fails_on"] = ", ".join(failed)
        row["flagged"] = bool(failed)
        if config.generalisation.teacher_ablation:
            row.update(teacher_ablation(idea, row[f"{config.testbed}_holdout_pgr"],
                                        scores.get((idea.id, config.testbed, True), []),
                                        config.generalisation.ablation_min_change, forum, tracker))
        table.append(row)
    return table


IGNORES_TEACHER = "ignores_teacher"


def teacher_ablation(idea: Result, holdout_pgr: float, shuffled_pgrs: list[float], min_change: float,
                     forum, tracker) -> dict:
    """Compare an idea's holdout PGR with the teacher's labels as given and shuffled. If it barely
    moves, the idea is not using the teacher: flag its result on the forum and its MLflow runs."""
    shuffled, _ = mean_ci(shuffled_pgrs)
    ignores = bool(shuffled_pgrs) and abs(holdout_pgr - shuffled) < min_change
    if ignores:
        forum.add_flag(idea.id, IGNORES_TEACHER)
        for run_id in idea.run_ids:
            if not run_id.startswith("pending:"):  # still in the spool: no run to tag yet
                tracker.add_flag(run_id, IGNORES_TEACHER)
    return {"shuffled_teacher_pgr": round(shuffled, 3), IGNORES_TEACHER: ignores}
