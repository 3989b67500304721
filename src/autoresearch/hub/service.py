"""The hub's rules, independent of HTTP: intake, leases, quorum, the decision, the chain.

    intake     rate limit -> size -> quarantined unpack (fsck) -> replay -> parent known ->
               scope (editable only, locked blobs identical, regular files) -> diff-line cap ->
               duplicate tree (linked, not run) -> near-duplicate diff (flagged) -> implausible
               gain (flagged, verified first) -> admitted and recorded as `queued`
    lease      a verifier of the same hardware class takes an open claim it did not make and has
               not measured; a claim made against an older best is first rebased onto the
               current one (or refused on a conflict). Leases expire (default 2x the target's
               timeout) unless renewed, and the claim goes to another verifier.
    decide     when `needed` verifiers reported: each verifier's verdict is whether its own runs
               show a gain (p < REPORT_ALPHA); verdicts that disagree with no majority of at
               least the quorum -> one more verifier (up to `max_verifiers`; none coming within
               a lease period -> decided with what there is); else the majority must see a gain
               and the pooled fresh-seed runs decide with a one-sided
               Welch t-test: verified iff p < alpha and the mean gain >= min_effect.
    chain      a verified claim moves the best of its class by compare-and-swap; if the best
               moved meanwhile, the claim is rebased onto it and verified again, or rejected
               on a conflict with a reason the contributor's agent sees.

Nothing a contributor sends is trusted: credit and the best come only from verification.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import random
import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from ..config import Target
from ..globs import matches
from ..ratchet import Ratchet
from .models import ClaimIn, ReportIn
from .repo import Change, HubRepo, IntakeError
from .store import OPEN, Best, Claim, HubStore, User

NEVER_EDITABLE = (".gitattributes", ".gitmodules")   # could steer git on a verifier's checkout
_MODES = ("100644", "100755")
_HOUR = 3600.0
REPORT_ALPHA = 0.05        # one verifier's own runs "see a gain" below this p (for disagreement)
BEST_POLL_SECONDS = 1.0   # how stale a polled best may be when another hub process moved it


class HubError(Exception):
    """A refused request: an HTTP status and one line that names the problem and the fix."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass
class HubSettings:
    quorum: int = 2                   # verifiers per claim
    trust_after: int = 5              # consecutive verified claims before a quorum of one
    spot_check: float = 0.2           # chance a trusted contributor's claim still gets the quorum
    max_verifiers: int = 5            # disagreement adds verifiers up to this many
    alpha: float = 0.01               # one-sided Welch t-test level for "verified"
    runs: int = 3                     # fresh-seed runs of each side per verifier
    max_bundle_bytes: int = 50 * 2**20
    max_unpacked_bytes: int = 200 * 2**20
    max_diff_lines: int = 5000        # lines added + removed
    rate_limit: int = 100             # claims per key per hour
    near_duplicate: float = 0.92      # Jaccard similarity of changed lines that flags a claim
    near_window: int = 500            # recent claims compared for near-duplicates
    implausible_gain: float = 0.10    # relative claimed gain in one step that is flagged
    lease_seconds: float | None = None   # default: 2x the target's hard timeout


@dataclass
class Lease:
    verification_id: int
    claim_id: int
    commit: str
    against: str
    hardware: str
    runs: int
    expires: float
    lease_seconds: float
    metric: str
    direction: str


@dataclass
class _Limiter:
    """Attempts per key in the last hour (refused ones too), in memory."""

    attempts: dict[int, deque] = field(default_factory=lambda: defaultdict(deque))

    def hit(self, uid: int, limit: int, now: float) -> float | None:
        q = self.attempts[uid]
        while q and q[0] < now - _HOUR:
            q.popleft()
        if len(q) >= limit:
            return q[0] + _HOUR - now
        q.append(now)
        return None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "arh_" + secrets.token_urlsafe(32)


def welch_p(candidate: list[float], best: list[float], direction: str, min_effect: float) -> float:
    """One-sided p-value of "the candidate is better than the best by at least min_effect"."""
    from scipy import stats

    shift = min_effect if direction == "minimize" else -min_effect
    a = [x + shift for x in candidate]
    if len(a) < 2 or len(best) < 2:
        return 1.0
    if _sd(a) == 0 and _sd(best) == 0:   # an exactly repeatable metric: compare exactly
        better = a[0] < best[0] if direction == "minimize" else a[0] > best[0]
        return 0.0 if better else 1.0
    alt = "less" if direction == "minimize" else "greater"
    p = float(stats.ttest_ind(a, best, equal_var=False, alternative=alt).pvalue)
    return p if math.isfinite(p) else 1.0


def _sd(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / max(1, len(xs) - 1))


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def diff_signature(diff: str) -> list[str]:
    """Hashes of the changed lines (whitespace-normalised), for near-duplicate detection."""
    lines = set()
    for ln in diff.splitlines():
        if ln[:1] in "+-" and not ln.startswith(("+++", "---")):
            norm = " ".join(ln[1:].split())
            if norm:
                lines.add(hashlib.blake2b(f"{ln[0]}{norm}".encode(), digest_size=6).hexdigest())
    return sorted(lines)[:512]


class Hub:
    """One target's hub. Thread-safe; every state change goes through the store."""

    def __init__(self, target: Target, store: HubStore, repo: HubRepo, base_commit: str,
                 settings: HubSettings | None = None):
        self.target = target
        self.spec = target.spec
        self.store = store
        self.repo = repo
        self.base = base_commit
        self.settings = settings or HubSettings()
        self.lease_seconds = self.settings.lease_seconds or 2 * self.spec.hard_timeout
        files = repo.list_files(base_commit)
        self.locked = {p: o for p, o in files.items() if matches(p, self.spec.locked_globs)}
        self._limiter = _Limiter()
        self._intake = threading.Lock()
        self._cache: dict[Any, Any] = {}
        self._trees: dict[str, str] = {}
        self._polled: dict[str, tuple[Best, float, int]] = {}
        self._moves = 0   # bests moved by this process (invalidates best_for_polling)
        self._rng = random.Random()

    # == setup ===================================================================================
    @classmethod
    def open(cls, target: Target, store: HubStore, data_dir, settings: HubSettings | None = None
             ) -> Hub:
        """The hub of a target: its bare repository under DATA/repo.git, refs repaired."""
        from ..config import CONFIG_NAME
        from ..errors import AutoresearchError
        from ..ratchet import git_blob_hash

        source = Ratchet(target.root)
        base = store.get_meta("base_commit")
        if base is None:
            base = source.head()
            committed = source.list_files(base).get(CONFIG_NAME)
            if committed != git_blob_hash(target.config_path.read_bytes()):
                raise AutoresearchError(f"{target.config_path} is not committed as it is — commit "
                                        f"it: the hub serves the target at a locked commit")
        repo = HubRepo.create(data_dir / "repo.git", source, base)
        store.set_meta("base_commit", base)
        hub = cls(target, store, repo, base, settings)
        hub.repair()
        return hub

    def repair(self) -> None:
        """After a kill -9: refs follow the store (the store wins); orphans are dropped."""
        self.repo.clean_quarantine()
        known = set(self.store.claim_commits())
        for ref, sha in self.repo.refs("refs/claims/").items():
            if sha not in known:
                self.repo.delete_ref(ref)
        for best in self.store.bests():
            self.repo.set_ref(f"refs/best/{best.hardware}", best.commit_sha)
        # leases of a hub that died stay valid until they expire: their verifiers may be alive

    def editable(self, rel: str) -> bool:
        return (matches(rel, self.spec.editable) and not matches(rel, self.spec.locked_globs)
                and rel.rsplit("/", 1)[-1] not in NEVER_EDITABLE)

    def info(self) -> dict[str, Any]:
        s = self.settings
        return {"metric": self.spec.metric, "direction": self.spec.direction,
                "base_commit": self.base, "subdir": self.repo.subdir,
                "editable": self.spec.editable,
                "quorum": s.quorum, "alpha": s.alpha, "runs": s.runs,
                "min_effect": self.spec.policy.min_effect, "lease_seconds": self.lease_seconds,
                "rate_limit_per_hour": s.rate_limit, "max_bundle_bytes": s.max_bundle_bytes,
                "max_diff_lines": s.max_diff_lines,
                "hardware": [b.hardware for b in self.store.bests()]}

    def best(self, hardware: str) -> Best:
        """The best of a class; a new class starts at the base commit."""
        return self.store.best(hardware) or self.store.init_best(hardware, self.base)

    def best_for_polling(self, hardware: str) -> Best:
        """The best as contributors poll it: read from the store at most once a second per class
        (another hub process sharing a PostgreSQL store may move it), at once after a move here."""
        hit = self._polled.get(hardware)
        now = time.monotonic()
        if hit is not None and hit[1] > now and hit[2] == self._moves:
            return hit[0]
        best = self.best(hardware)
        self._polled[hardware] = (best, now + BEST_POLL_SECONDS, self._moves)
        return best

    # == intake ==================================================================================
    def submit(self, user: User, body: ClaimIn) -> Claim:
        s = self.settings
        now = time.time()
        wait = self._limiter.hit(user.id, s.rate_limit, now)
        if wait is None and self.store.claims_since(user.id, now - _HOUR) >= s.rate_limit:
            wait = 60.0
        if wait is not None:
            raise HubError(429, f"rate limit: at most {s.rate_limit} claims an hour per key — "
                                f"retry in {wait:.0f}s", {"Retry-After": str(max(1, int(wait)))})
        if len(body.bundle) > s.max_bundle_bytes * 4 // 3 + 8:
            raise HubError(413, f"the bundle is over {s.max_bundle_bytes} bytes — make a smaller "
                                f"change")
        try:
            data = base64.b64decode(body.bundle, validate=True)
        except (binascii.Error, ValueError):
            raise HubError(400, "the bundle is not valid base64 — send base64 of 'git bundle "
                                "create'") from None
        if len(data) > s.max_bundle_bytes:
            raise HubError(413, f"the bundle is {len(data)} bytes, over the cap of "
                                f"{s.max_bundle_bytes} — make a smaller change")
        if not self._parent_known(user, body.parent):
            raise HubError(422, f"parent {body.parent[:12]} is not on the hub — claim against "
                                f"the hub's best (GET /api/best) or one of your own claims")
        try:
            with self.repo.quarantine(data, s.max_unpacked_bytes, known=[body.parent]) as rec:
                if self.store.claim_by_commit(rec.commit):
                    old = self.store.claim_by_commit(rec.commit)
                    raise HubError(409, f"commit {rec.commit[:12]} was already claimed as #"
                                        f"{old.id if old else '?'} — a claim is submitted once")
                if rec.parents != [body.parent]:
                    raise HubError(422, f"the bundle's commit has parent(s) "
                                        f"{', '.join(p[:12] for p in rec.parents) or 'none'}, "
                                        f"not the claimed parent {body.parent[:12]} — one commit "
                                        f"on top of its hub parent")
                diff, sig, added, removed = self._check_scope(rec.changes, rec.diff)
                with self._intake:
                    if self.store.claim_by_commit(rec.commit):
                        raise HubError(409, f"commit {rec.commit[:12]} was already claimed")
                    self.repo.admit(rec)
                    return self._record(user, body, rec.commit, rec.tree, diff, sig, added,
                                        removed)
        except IntakeError as e:
            raise HubError(e.status, str(e)) from None

    def _parent_known(self, user: User, parent: str) -> bool:
        """A claim builds on the base, a best or former best, or one of the user's own claims."""
        if parent == self.base or parent in {b.commit_sha for b in self.store.bests()}:
            return True
        if parent in set(self.store.chain_commits()):
            return True
        c = self.store.claim_by_commit(parent)
        return c is not None and c.user_id == user.id and c.status in (*OPEN, "verified")

    def _check_scope(self, changes: list[Change], diff: str) -> tuple[str, list[str], int, int]:
        if not changes:
            raise HubError(422, "the claim changes nothing against its parent — a claim must "
                                "change an editable file (same code, same score)")
        locked = [c.path for c in changes if c.path in self.locked
                  or matches(c.path, self.spec.locked_globs)]
        if locked:
            raise HubError(422, f"the claim changes locked file(s) {', '.join(locked[:5])} — only "
                                f"{', '.join(self.spec.editable)} may change")
        outside = [c.path for c in changes if not self.editable(c.path)]
        if outside:
            raise HubError(422, f"the claim changes file(s) outside the editable globs: "
                                f"{', '.join(outside[:5])} — only {', '.join(self.spec.editable)} "
                                f"may change")
        odd = [c.path for c in changes if c.new_mode not in (*_MODES, "000000")]
        if odd:
            raise HubError(422, f"{', '.join(odd[:5])}: only regular files may be claimed (no "
                                f"symlinks or submodules)")
        added = sum(1 for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++"))
        removed = sum(1 for ln in diff.splitlines()
                      if ln.startswith("-") and not ln.startswith("---"))
        if added + removed > self.settings.max_diff_lines:
            raise HubError(413, f"the diff has {added + removed} changed lines, over the cap of "
                                f"{self.settings.max_diff_lines} — make a smaller change")
        return diff, diff_signature(diff), added, removed

    def _record(self, user: User, body: ClaimIn, commit: str, tree: str, diff: str,
                sig: list[str], added: int, removed: int) -> Claim:
        s = self.settings
        flags: list[str] = []
        priority = 0
        with self.store.atomic():
            user = self.store.user(user.id) or user   # the streak as it is now
            best = self.best(body.hardware)
            dup = self.store.claim_by_tree(tree, body.hardware)
            near = self._near_duplicate(body.hardware, sig)
            if near:
                flags.append(f"near-duplicate of #{near[0]} (similarity {near[1]:.2f})")
            gain = self._relative_gain(body.metric, body.parent, best)
            if gain is not None and gain > s.implausible_gain:
                flags.append(f"implausible claimed gain {gain:.0%} in one step: verified first")
                priority = 1
            needed = s.quorum
            if user.streak >= s.trust_after:
                if self._rng.random() < s.spot_check:
                    flags.append("spot check of a trusted contributor")
                else:
                    needed = 1
            fields = dict(user_id=user.id, hardware=body.hardware, kind="claim",
                          parent=body.parent, commit_sha=commit, tree_sha=tree,
                          agent=body.agent, description=body.description,
                          claimed_metric=body.metric, claimed_runs=list(body.runs),
                          flags=flags, needed=needed, priority=priority, diff=diff[:200_000],
                          diff_sig=sig, added=added, removed=removed)
            if dup is not None:
                return self.store.add_claim(
                    **fields, status="duplicate", duplicate_of=dup.id,
                    reason=f"same code as claim #{dup.id} ({dup.status}); linked to it, not run "
                           f"again")
            if tree == self._tree(best.commit_sha):
                raise HubError(409, "the claim's code is the current best's — nothing to verify")
            return self.store.add_claim(**fields, status="queued")

    def _tree(self, commit: str) -> str:
        """The tree of a commit (cached: commits never change)."""
        tree = self._trees.get(commit)
        if tree is None:
            tree = self._trees[commit] = self.repo.tree_of(commit)
        return tree

    def _near_duplicate(self, hardware: str, sig: list[str]) -> tuple[int, float] | None:
        if not sig:
            return None
        mine = set(sig)
        best: tuple[int, float] | None = None
        for cid, other in self.store.recent_signatures(hardware, self.settings.near_window):
            if not other:
                continue
            o = set(other)
            sim = len(mine & o) / len(mine | o)
            if sim >= self.settings.near_duplicate and (best is None or sim > best[1]):
                best = (cid, sim)
        return best

    def _relative_gain(self, claimed: float, parent: str, best: Best) -> float | None:
        """The claimed gain over the known value of its parent (or the best, whichever is
        larger), relative; None when neither value is known yet."""
        refs = [best.metric]
        for link in self.store.chain(best.hardware, limit=50):
            if link.commit_sha == parent:
                refs.append(link.metric)
        if parent == self.base:
            value = self.store.get_meta(f"base_metric:{best.hardware}")
            refs.append(float(value) if value is not None else None)
        gains = []
        for ref in refs:
            if ref is None or ref == 0:
                continue
            gain = (ref - claimed) if self.spec.direction == "minimize" else (claimed - ref)
            gains.append(gain / abs(ref))
        return max(gains) if gains else None

    # == leases ==================================================================================
    def lease(self, verifier: User, hardware: str) -> Lease | None:
        now = time.time()
        with self.store.atomic():
            self.store.expire_leases(now)
            self._settle_stalled(hardware, now)
            best = self.best(hardware)
            for _pass in range(4):   # a pass that rebased claims makes new ones: look again
                rebased = False
                for claim in self.store.open_candidates(hardware):
                    if claim.user_id == verifier.id:
                        continue   # nobody verifies their own claims
                    parent_claim = self.store.claim_by_commit(claim.parent)
                    if parent_claim is not None and parent_claim.status in OPEN:
                        continue   # its parent is still being verified: decide that first
                    vs = self.store.verifications(claim.id)
                    started = any(v.status in ("leased", "done") for v in vs)
                    if claim.parent != best.commit_sha and not started:
                        self._rebase(claim, best, "it was made against an older best")
                        rebased = True
                        continue
                    # a claim already being verified is finished against its own parent, so
                    # its verifiers' runs compare; if it wins, the best moved, and it is rebased
                    if any(v.verifier_id == verifier.id and v.status in ("leased", "done")
                           for v in vs):
                        continue   # one result per verifier per claim
                    if sum(1 for v in vs if v.status in ("leased", "done")) >= claim.needed:
                        continue
                    v = self.store.add_verification(
                        claim_id=claim.id, verifier_id=verifier.id, against=claim.parent,
                        status="leased", expires=now + self.lease_seconds)
                    self.store.update_claim(claim.id, status="verifying")
                    return Lease(v.id, claim.id, claim.commit_sha, claim.parent, hardware,
                                 self.settings.runs, v.expires, self.lease_seconds,
                                 self.spec.metric, self.spec.direction)
                if not rebased:
                    break
        return None

    def _settle_stalled(self, hardware: str, now: float) -> None:
        """A claim that asked for one more verifier (a disagreement) and found none within a
        lease period is decided with the reports it has: a small pool must not stall it."""
        for claim in self.store.open_candidates(hardware):
            if claim.status != "queued" or claim.updated > now - self.lease_seconds:
                continue
            done = self.store.verifications(claim.id, ("done",))
            if len(done) >= min(self.settings.quorum, claim.needed) and len(done) < claim.needed:
                self._decide(claim, force=True)

    def _own_lease(self, verifier: User, vid: int):
        v = self.store.verification(vid)
        if v is None:
            raise HubError(404, f"no lease #{vid}")
        if v.verifier_id != verifier.id:
            raise HubError(403, f"lease #{vid} belongs to another verifier")
        if v.status != "leased":
            raise HubError(409, f"lease #{vid} is {v.status} (a lease not renewed within "
                                f"{self.lease_seconds:g}s expires and the claim goes to another "
                                f"verifier) — lease a new claim")
        return v

    def renew(self, verifier: User, vid: int) -> float:
        with self.store.atomic():
            self._own_lease(verifier, vid)
            expires = time.time() + self.lease_seconds
            self.store.update_verification(vid, expires=expires)
        return expires

    def report(self, verifier: User, vid: int, body: ReportIn) -> Claim:
        now = time.time()
        with self.store.atomic():
            v = self._own_lease(verifier, vid)
            if body.outcome == "measured" and (len(body.candidate_runs) < 2 or
                                               len(body.best_runs) < 2):
                raise HubError(422, "a measured report needs at least 2 runs of each side")
            if body.outcome == "error":
                # the verifier could not measure (its machine, not the claim): give it back
                self.store.update_verification(vid, status="abandoned", outcome="error",
                                               reason=body.reason, finished=now)
            else:
                self.store.update_verification(
                    vid, status="done", outcome=body.outcome, candidate_runs=body.candidate_runs,
                    best_runs=body.best_runs, seeds=body.seeds, reason=body.reason, finished=now)
            claim = self.store.claim(v.claim_id)
            assert claim is not None
            if body.outcome == "measured":   # the base's value, for the sanity check of gains
                mean = sum(body.best_runs) / len(body.best_runs)
                self.store.measure_best(claim.hardware, v.against, mean)
                key = f"base_metric:{claim.hardware}"
                if v.against == self.base and self.store.get_meta(key) is None:
                    self.store.set_meta(key, repr(mean))
            if claim.status in OPEN:
                self._decide(claim)
            claim = self.store.claim(v.claim_id)
        assert claim is not None
        return claim

    # == decisions ===============================================================================
    def _passes(self, cand: list[float], best: list[float]) -> bool:
        mc, mb = _mean(cand), _mean(best)
        if mc is None or mb is None:
            return False
        gain = (mb - mc) if self.spec.direction == "minimize" else (mc - mb)
        return gain >= self.spec.policy.min_effect and gain > 0

    def _sees_gain(self, cand: list[float], best: list[float]) -> bool:
        """One verifier's verdict: its own runs show a gain at REPORT_ALPHA (a looser level
        than the decision's, which pools every verifier's runs)."""
        return self._passes(cand, best) and welch_p(
            cand, best, self.spec.direction, self.spec.policy.min_effect) < REPORT_ALPHA

    def _decide(self, claim: Claim, force: bool = False) -> None:
        s = self.settings
        done = self.store.verifications(claim.id, ("done",))
        active = self.store.verifications(claim.id, ("leased",))
        if len(done) < claim.needed and not force:
            self.store.update_claim(claim.id, status="verifying" if active else "queued")
            return
        verdicts = [v.outcome == "measured" and self._sees_gain(v.candidate_runs, v.best_runs)
                    for v in done]
        top = max(sum(verdicts), len(verdicts) - sum(verdicts))
        settled = top * 2 > len(verdicts) and top >= min(s.quorum, claim.needed)
        if len(set(verdicts)) > 1 and not settled and claim.needed < s.max_verifiers \
                and not force:
            flags = [*claim.flags, f"verifiers disagree ({sum(verdicts)} of {len(verdicts)} saw "
                                   f"a gain): one more verifier"]
            self.store.update_claim(claim.id, needed=claim.needed + 1, flags=flags,
                                    status="verifying" if active else "queued")
            return
        cand = [x for v in done if v.outcome == "measured" for x in v.candidate_runs]
        base = [x for v in done if v.outcome == "measured" for x in v.best_runs]
        crashes = [v for v in done if v.outcome == "crash"]
        p = welch_p(cand, base, self.spec.direction, self.spec.policy.min_effect)
        mc, mb = _mean(cand), _mean(base)
        majority = sum(verdicts) * 2 > len(verdicts)
        m = self.spec.metric
        if crashes and not majority:
            self._reject(claim, f"failed on verification: {crashes[0].reason or 'crash'}", mc, mb, p)
            return
        if not (majority and p < s.alpha and self._passes(cand, base)):
            self._reject(claim, (
                f"not verified: {m} {_fmt(mc)} vs best {_fmt(mb)} over {len(cand)} fresh-seed "
                f"run(s) each, p = {p:.3g} (needs < {s.alpha:g}) with min_effect "
                f"{self.spec.policy.min_effect:g}; claimed {_fmt(claim.claimed_metric)}"), mc, mb, p)
            return
        best = self.best(claim.hardware)
        if best.commit_sha != claim.parent or not self.store.swap_best(
                claim.hardware, best.version, claim.commit_sha, claim.id, mc):
            self.store.update_claim(claim.id, verified_metric=mc, best_metric=mb, p_value=p)
            self._rebase(self.store.claim(claim.id) or claim, self.best(claim.hardware),
                         f"it was verified (p = {p:.3g}) but the best moved meanwhile")
            return
        self._moves += 1
        names = [u.name for v in done if (u := self.store.user(v.verifier_id))]
        self.store.update_claim(claim.id, status="verified", verified_metric=mc, best_metric=mb,
                                p_value=p, reason=f"verified: {m} {_fmt(mc)} vs {_fmt(mb)}, "
                                                  f"p = {p:.3g}, by {', '.join(names)}")
        self.store.add_link(hardware=claim.hardware, claim_id=claim.id,
                            commit_sha=claim.commit_sha, parent=claim.parent, metric=mc,
                            best_metric=mb, p_value=p, verifiers=names)
        user = self.store.user(claim.user_id)
        if user is not None:
            self.store.set_streak(user.id, user.streak + 1)
        self.repo.set_ref(f"refs/best/{claim.hardware}", claim.commit_sha)

    def _reject(self, claim: Claim, reason: str, mc: float | None, mb: float | None,
                p: float | None) -> None:
        self.store.update_claim(claim.id, status="rejected", reason=reason, verified_metric=mc,
                                best_metric=mb, p_value=p)
        self.store.set_streak(claim.user_id, 0)

    def _rebase(self, claim: Claim, best: Best, why: str) -> None:
        """Replay a claim's change onto the current best, as a new claim verified again."""
        new = self.repo.merge_onto(claim.commit_sha, claim.parent, best.commit_sha,
                                   f"{claim.description} (rebased by the hub)")
        if new is None:
            self.store.update_claim(claim.id, status="conflict", reason=(
                f"{why}, and its change conflicts with the new best {best.commit_sha[:12]} — "
                f"re-propose the idea against the current best"))
            return
        tree = self.repo.tree_of(new)
        dup = self.store.claim_by_tree(tree, claim.hardware)
        if tree == self.repo.tree_of(best.commit_sha) or (dup is not None and dup.id != claim.id):
            self.store.update_claim(claim.id, status="duplicate", duplicate_of=dup.id if dup else None,
                                    reason=f"{why}; rebased onto the best it repeats "
                                           f"{'claim #' + str(dup.id) if dup else 'the best'}")
            return
        self.repo.set_ref(f"refs/claims/{new}", new)
        diff = self.repo.diff(best.commit_sha, new)
        added, removed = self.repo.numstat(best.commit_sha, new)
        r = self.store.add_claim(
            user_id=claim.user_id, hardware=claim.hardware, kind="rebase", parent=best.commit_sha,
            commit_sha=new, tree_sha=tree, agent=claim.agent,
            description=f"{claim.description} (rebased onto {best.commit_sha[:12]})",
            claimed_metric=claim.claimed_metric, claimed_runs=claim.claimed_runs, status="queued",
            flags=claim.flags, needed=claim.needed, priority=claim.priority, diff=diff[:200_000],
            diff_sig=claim.diff_sig, added=added, removed=removed, rebased_from=claim.id)
        self.store.update_claim(claim.id, status="rebased", reason=(
            f"{why}: rebased onto the best {best.commit_sha[:12]} as claim #{r.id}, which is "
            f"verified again"))

    # == reading =================================================================================
    def claim_view(self, c: Claim, with_diff: bool = False) -> dict[str, Any]:
        user = self.store.user(c.user_id)
        d = {"id": c.id, "status": c.status, "reason": c.reason, "flags": c.flags,
             "contributor": user.name if user else None, "hardware": c.hardware, "kind": c.kind,
             "commit": c.commit_sha, "parent": c.parent, "agent": c.agent,
             "description": c.description, "claimed": c.claimed_metric,
             "claimed_runs": c.claimed_runs, "verified": c.verified_metric,
             "best_metric": c.best_metric, "p_value": c.p_value, "needed": c.needed,
             "duplicate_of": c.duplicate_of, "rebased_from": c.rebased_from,
             "added": c.added, "removed": c.removed, "created": c.created, "updated": c.updated}
        if with_diff:
            d["diff"] = c.diff
        return d

    def leaderboard(self, hardware: str | None = None) -> dict[str, Any]:
        key = (hardware, self.store.state_version())
        hit = self._cache.get("board")
        if hit is not None and hit[0] == key:
            return hit[1]
        classes = []
        for best in self.store.bests():
            if hardware is not None and best.hardware != hardware:
                continue
            chain = []
            for link in self.store.chain(best.hardware):
                c = self.store.claim(link.claim_id) if link.claim_id else None
                row = self.claim_view(c, with_diff=True) if c else {}
                row.update({"verified": link.metric, "best_metric": link.best_metric,
                            "p_value": link.p_value, "verifiers": link.verifiers, "at": link.at})
                chain.append(row)
            counts: dict[str, dict[str, Any]] = {}
            for row in chain:
                who = counts.setdefault(row.get("contributor") or "?", {"verified": 0, "gain": 0.0})
                who["verified"] += 1
                if row.get("verified") is not None and row.get("best_metric") is not None:
                    g = row["best_metric"] - row["verified"]
                    who["gain"] += g if self.spec.direction == "minimize" else -g
            board = sorted(({"contributor": k, **v} for k, v in counts.items()),
                           key=lambda r: (-r["verified"], -r["gain"]))
            pending = [self.claim_view(c) for c in self.store.claims(
                hardware=best.hardware, statuses=OPEN, limit=100, newest_first=False)]
            recent = [self.claim_view(c) for c in self.store.claims(
                hardware=best.hardware, statuses=("rejected", "conflict", "duplicate", "rebased"),
                limit=30)]
            classes.append({"hardware": best.hardware, "best": {
                "commit": best.commit_sha, "claim": best.claim_id, "metric": best.metric,
                "version": best.version}, "leaderboard": board, "chain": chain,
                "pending": pending, "recent": recent,
                "counts": self.store.count_claims(best.hardware)})
        out = {"metric": self.spec.metric, "direction": self.spec.direction,
               "base_commit": self.base, "classes": classes, "at": time.time()}
        self._cache["board"] = (key, out)
        return out


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.6g}"
