#!/usr/bin/env python3
"""Randomized model checker: per-slot Multi-Paxos + stop-sign (SS) reconfiguration, rules R1-R4.

Model
  * replicas 0..n-1; epoch 0 and epoch 1 member sets (e.g. {0,1,2} -> {1,2,3}).
  * ballot = (epoch, round, pid); B0=(0,0,-1) is the "ballot 0" of learned entries whose
    stored value differed.  Rounds are unique per epoch.
  * message soup (list); an action delivers any message (consuming it, or keeping it =
    duplication), drops any message, starts a candidacy, proposes, sends a commit point,
    or FETCHes.
  * acceptor: ordinary ballot rules (PREPARE needs b > promised, ACCEPT needs b >= promised).
  * leader: one PREPARE from its commit point, per-slot merge (chosen wins, else highest
    ballot, gaps -> no-op), R2 SS rule, re-propose non-chosen slots, new values above.
  * learning per R4 (i) own quorum, (ii) leader commit point for entries accepted at that
    ballot, (iii) PROMISE / FETCH-REPLY chosen prefix below the sender's commit point.
  * epoch switch per R3 when the contiguous commit point passes an SS.
Checked after every vote / learn:
  * at most one value chosen per slot (chosen in epoch e = majority of epoch-e members
    voted at one epoch-e ballot);
  * nothing chosen with epoch-0 ballots above the lowest chosen epoch-0 SS; nothing chosen
    in epoch 1 at or below it (or without a chosen SS);
  * a learned value is chosen; no replica learns two values for a slot.
Variants (--variant, comma separated):
  naive      : merge re-proposes everything (no R2)   -> should find the TRAP
  noflag     : R2 without "or flagged chosen" clause
  nor3a      : R3 without (a) (no promise raise at switch)
  r4bad      : FETCH-REPLY may carry one arbitrary chosen slot, learned non-contiguously
  noignore   : epoch-(k+1) candidate does not ignore old-epoch entries above s
  keepchosen : leader re-proposes flagged-chosen slots too
  rawcommit  : COMMIT carries the leader's raw contiguous cp (literal R4(ii)); default is
               guarded: cp is cut at the first slot where the leader learned a value different
               from the one it proposed at its ballot (a stale leader)
"""
import random, sys, argparse, time
import multiprocessing as mp

NOOP = ('noop',)
B0 = (0, 0, -1)
BNONE = (-1, 0, -1)


def is_ss(v):
    return v[0] == 'ss'


def fmt_v(v):
    if v == NOOP:
        return 'noop'
    if v[0] == 'ss':
        return 'SS%d' % v[2]
    return 'v%d.%d' % (v[1], v[2]) if v[0] == 'v' else 'w%d.%d' % (v[1], v[2])


def fmt_b(b):
    if b == B0:
        return 'b0'
    return 'e%dr%d' % (b[0], b[1])


class Rep:
    __slots__ = ('id', 'promised', 'log', 'learned', 'cp', 'epoch', 'ss_slot', 'role', 'ballot',
                 'from_slot', 'promises', 'acks', 'props', 'next_slot', 'blocked')

    def __init__(self, i):
        self.id = i
        self.promised = BNONE
        self.log = {}
        self.learned = {}
        self.cp = 0
        self.epoch = 0
        self.ss_slot = None
        self.role = None
        self.ballot = None
        self.from_slot = 0
        self.promises = {}
        self.acks = {}
        self.props = {}
        self.next_slot = 0
        self.blocked = False


class World:
    def __init__(self, members, S, V):
        self.members = members
        self.mset = {e: frozenset(m) for e, m in members.items()}
        self.maj = {e: len(m) // 2 + 1 for e, m in members.items()}
        self.S = S
        self.V = V
        n = 1 + max(max(m) for m in members.values())
        self.reps = [Rep(i) for i in range(n)]
        self.msgs = []
        self.votes = {}
        self.chosen = {}
        self.viol = None
        self.notes = []

    # ------------------------------------------------------------------ checks
    def violate(self, why):
        if self.viol is None:
            self.viol = why

    def vote(self, a, s, b, v):
        key = (s, b, v)
        st = self.votes.setdefault(key, set())
        st.add(a)
        e = b[0]
        if len(st & self.mset[e]) >= self.maj[e]:
            cs = self.chosen.setdefault(s, set())
            if (v, e, b) not in cs:
                cs.add((v, e, b))
                self.notes.append('CHOSEN slot %d = %s at %s' % (s, fmt_v(v), fmt_b(b)))
                self.check()

    def check(self):
        for s, cs in self.chosen.items():
            vals = {v for v, e, b in cs}
            if len(vals) > 1:
                self.violate('AGREEMENT: slot %d chosen %s' % (s, sorted(fmt_v(v) + '@' + fmt_b(b) for v, e, b in cs)))
        ss0 = [s for s, cs in self.chosen.items() for v, e, b in cs if e == 0 and is_ss(v) and v[1] == 0]
        if ss0:
            s0 = min(ss0)
            for s, cs in self.chosen.items():
                for v, e, b in cs:
                    if e == 0 and s > s0:
                        self.violate('EPOCH: slot %d chosen %s with epoch-0 ballot %s above chosen SS at slot %d'
                                     % (s, fmt_v(v), fmt_b(b), s0))
                    if e == 1 and s <= s0:
                        self.violate('EPOCH: slot %d chosen in epoch 1 at/below SS slot %d' % (s, s0))
        else:
            for s, cs in self.chosen.items():
                for v, e, b in cs:
                    if e == 1:
                        self.violate('EPOCH: epoch-1 value chosen without chosen SS')

    # ------------------------------------------------------------------ learning / epochs
    def learn(self, r, s, v, how):
        if s in r.learned:
            if r.learned[s] != v:
                self.violate('LEARN: replica %d learned two values at slot %d' % (r.id, s))
            return
        vals = {x[0] for x in self.chosen.get(s, ())}
        if v not in vals:
            self.violate('LEARN: replica %d learned %s at slot %d via %s, not chosen' % (r.id, fmt_v(v), s, how))
        r.learned[s] = v
        e = r.log.get(s)
        r.log[s] = (e[0], v, True) if (e and e[1] == v) else (B0, v, True)
        while r.cp in r.learned:
            s2 = r.cp
            r.cp += 1
            w = r.learned[s2]
            if is_ss(w) and w[1] == r.epoch:
                self.switch(r, s2)

    def switch(self, r, s):
        r.epoch += 1
        r.ss_slot = s
        if 'nor3a' not in self.V:
            r.promised = max(r.promised, (r.epoch, 0, -1))
        r.role = None
        r.blocked = False
        r.props = {}
        r.acks = {}
        r.promises = {}

    # ------------------------------------------------------------------ protocol
    def send(self, m):
        self.msgs.append(m)

    def start_cand(self, r, rnd):
        e = r.epoch
        r.role = 'cand'
        r.ballot = (e, rnd, r.id)
        r.from_slot = r.cp
        r.promises = {}
        r.props = {}
        r.acks = {}
        r.blocked = False
        for a in self.members[e]:
            self.send(('prep', a, r.id, r.ballot, r.cp))

    def deliver(self, m):
        t = m[0]
        if t == 'prep':
            _, to, frm, b, fs = m
            r = self.reps[to]
            if b > r.promised:
                r.promised = b
                ents = tuple(sorted((s, e) for s, e in r.log.items() if s >= fs))
                self.send(('prom', frm, to, b, ents, r.cp))
        elif t == 'prom':
            _, to, frm, b, ents, scp = m
            c = self.reps[to]
            if c.role != 'cand' or c.ballot != b:
                return
            d = dict(ents)
            for s in range(c.cp, scp):          # R4(iii): chosen prefix below sender's cp
                if s not in d:
                    break
                self.learn(c, s, d[s][1], 'promise-prefix from %d' % frm)
                if c.role != 'cand':
                    return
            c.promises[frm] = d
            if len(c.promises) >= self.maj[c.epoch]:
                self.become_leader(c)
        elif t == 'acc':
            _, to, frm, b, s, v = m
            r = self.reps[to]
            if b >= r.promised:
                r.promised = b
                e = r.log.get(s)
                if not (e and e[2]):
                    r.log[s] = (b, v, False)
                self.vote(to, s, b, v)
                self.send(('acked', frm, to, b, s, v))
        elif t == 'acked':
            _, to, frm, b, s, v = m
            c = self.reps[to]
            if c.role != 'lead' or c.ballot != b:
                return
            A = c.acks.setdefault(s, set())
            A.add(frm)
            if len(A & self.mset[c.epoch]) >= self.maj[c.epoch] and s not in c.learned:
                self.learn(c, s, v, 'own quorum')          # R4(i)
        elif t == 'commit':
            _, to, frm, b, cp = m
            r = self.reps[to]
            for s in range(cp):                             # R4(ii)
                if s in r.learned:
                    continue
                e = r.log.get(s)
                if e and e[0] == b:
                    self.learn(r, s, e[1], 'commit of %d' % frm)
        elif t == 'fetch':
            _, to, frm, fcp, single = m
            y = self.reps[to]
            if single is None or 'r4bad' not in self.V:
                facts = tuple((s, y.learned[s]) for s in range(fcp, y.cp))
            else:
                facts = ((single, y.learned[single]),) if single in y.learned else ()
            self.send(('freply', frm, to, facts))
        elif t == 'freply':
            _, to, frm, facts = m
            x = self.reps[to]
            for s, v in facts:
                self.learn(x, s, v, 'fetch from %d' % frm)

    def become_leader(self, c):
        V = self.V
        k = c.epoch
        start = c.cp
        col = {}
        for d in c.promises.values():
            for s, (b, v, ch) in d.items():
                if s < start:
                    continue
                if k > 0 and 'noignore' not in V and s > c.ss_slot and b[0] < k:
                    continue          # R3: ignore old-epoch entries above s
                col.setdefault(s, []).append((b, v, ch))
        top = max(col) if col else start - 1
        merged = {}
        for s in range(start, top + 1):
            es = col.get(s)
            if not es:
                merged[s] = (B0, NOOP, False)
            else:
                chs = [e for e in es if e[2]]
                merged[s] = chs[0] if chs else max(es)
        blocked = False
        if 'naive' in V:
            blocked = any(is_ss(merged[s][1]) and merged[s][1][1] == k for s in merged)
        else:                                           # R2
            for s in range(start, top + 1):
                b, v, ch = merged[s]
                if is_ss(v) and v[1] == k:
                    if ch:
                        cut = s
                        blocked = True
                        break
                    above = [merged[t] for t in range(s + 1, top + 1)]
                    if ('noflag' not in V and any(e[2] for e in above)) or any(e[0] > b for e in above):
                        merged[s] = (b, NOOP, False)
                        continue
                    cut = s
                    blocked = True
                    break
            if blocked:
                for t in range(cut + 1, top + 1):
                    del merged[t]
        c.role = 'lead'
        c.props = {}
        c.acks = {}
        c.blocked = blocked
        for s in sorted(merged):
            b, v, ch = merged[s]
            if ch and 'keepchosen' not in V:
                continue
            c.props[s] = v
            for a in self.members[k]:
                self.send(('acc', a, c.id, c.ballot, s, v))
        c.next_slot = top + 1

    def propose(self, c, v):
        s = c.next_slot
        c.next_slot += 1
        c.props[s] = v
        if is_ss(v):
            c.blocked = True                           # R1
        for a in self.members[c.epoch]:
            self.send(('acc', a, c.id, c.ballot, s, v))

    def commit(self, c):
        cp = c.cp
        if 'rawcommit' not in self.V:
            # guarded R4(ii): a leader that learned, below its cp, a value different from what it
            # proposed at its ballot is stale and must not advertise that cp for its ballot.
            for s, v in c.props.items():
                if s < cp and c.learned.get(s) != v:
                    cp = min(cp, s)
        for a in self.members[c.epoch]:
            if a != c.id:
                self.send(('commit', a, c.id, c.ballot, cp))

    # ------------------------------------------------------------------ actions (replayable)
    def apply(self, act):
        """Returns True if the action was enabled and applied."""
        k = act[0]
        if k == 'deliver' or k == 'drop':
            m = act[1]
            try:
                i = self.msgs.index(m)
            except ValueError:
                return False
            if k == 'drop' or act[2]:
                self.msgs.pop(i)
            if k == 'deliver':
                self.deliver(m)
            return True
        if k == 'cand':
            r = self.reps[act[1]]
            if r.id not in self.mset.get(r.epoch, ()) or r.epoch != act[3]:
                return False
            self.start_cand(r, act[2])
            return True
        if k == 'propose':
            c = self.reps[act[1]]
            if c.role != 'lead' or c.blocked or c.next_slot >= self.S or c.ballot != act[3]:
                return False
            self.propose(c, act[2])
            return True
        if k == 'commit':
            c = self.reps[act[1]]
            if c.role != 'lead':
                return False
            self.commit(c)
            return True
        if k == 'fetch':
            x = self.reps[act[1]]
            self.send(('fetch', act[2], x.id, x.cp, act[3]))
            return True
        return False


def swarm_params(rng):
    """Swarm testing: every run draws its own action weights."""
    return {
        'deliver': rng.choice([4, 8, 12, 20]),
        'keep': rng.choice([0.0, 0.05, 0.2]),
        'drop': rng.choice([0.5, 2, 5, 10]),
        'cand': rng.choice([0.2, 0.7, 2]),
        'propose': rng.choice([1, 3, 6]),
        'ss': rng.choice([0.2, 0.45, 0.7]),
        'commit': rng.choice([0.1, 0.7, 2]),
        'fetch': rng.choice([0.1, 0.7, 2]),
    }


def random_action(w, rng, rounds, budget, V, P):
    acts = []
    wts = []
    if w.msgs:
        m = rng.choice(w.msgs)
        acts.append(('deliver', m, rng.random() >= P['keep'])); wts.append(P['deliver'])
        acts.append(('drop', rng.choice(w.msgs))); wts.append(P['drop'])
    for r in w.reps:
        e = r.epoch
        if e in w.mset and r.id in w.mset[e] and rounds[e] < budget[e]:
            acts.append(('cand', r.id, rounds[e] + 1, e)); wts.append(P['cand'])
        if r.role == 'lead':
            if not r.blocked and r.next_slot < w.S:
                if e == 0 and rng.random() < P['ss']:
                    v = ('ss', 0, r.ballot[1])
                else:
                    v = ('v' if e == 0 else 'w', r.ballot[1], r.next_slot)
                acts.append(('propose', r.id, v, r.ballot)); wts.append(P['propose'])
            acts.append(('commit', r.id)); wts.append(P['commit'])
    n = len(w.reps)
    x = rng.randrange(n)
    y = rng.randrange(n)
    if x != y:
        single = None
        if 'r4bad' in V and w.reps[y].learned and rng.random() < 0.5:
            single = rng.choice(sorted(w.reps[y].learned))
        acts.append(('fetch', x, y, single)); wts.append(P['fetch'])
    if not acts:
        return None
    return rng.choices(acts, wts)[0]


def run_one(members, S, V, seed, maxsteps, budget):
    rng = random.Random(seed)
    P = swarm_params(rng)
    w = World(members, S, V)
    rounds = {e: 0 for e in members}
    trace = []
    for _ in range(maxsteps):
        a = random_action(w, rng, rounds, budget, V, P)
        if a is None:
            break
        if w.apply(a):
            if a[0] == 'cand':
                rounds[a[3]] = a[2]
            trace.append(a)
        if w.viol:
            return trace, w.viol
    return None, None


def replay(members, S, V, trace):
    w = World(members, S, V)
    used = []
    for a in trace:
        if w.apply(a):
            used.append(a)
        if w.viol:
            return w, used
    return w, None


def minimize(members, S, V, trace):
    _, t = replay(members, S, V, trace)
    assert t is not None
    changed = True
    while changed:
        changed = False
        i = len(t) - 1
        while i >= 0:
            cand = t[:i] + t[i + 1:]
            w, u = replay(members, S, V, cand)
            if u is not None and len(u) < len(t):
                t = u
                changed = True
                i = min(i, len(t)) - 1
            else:
                i -= 1
    # drop 'keep' duplications where consuming works equally
    return t


def fmt_msg(m):
    t = m[0]
    if t == 'prep':
        return 'PREPARE(%s, from=%d) %d->%d' % (fmt_b(m[3]), m[4], m[2], m[1])
    if t == 'prom':
        ents = ', '.join('%d:%s@%s%s' % (s, fmt_v(v), fmt_b(b), '*' if ch else '') for s, (b, v, ch) in m[4])
        return 'PROMISE(%s, [%s], cp=%d) %d->%d' % (fmt_b(m[3]), ents, m[5], m[2], m[1])
    if t == 'acc':
        return 'ACCEPT(%s, slot %d=%s) %d->%d' % (fmt_b(m[3]), m[4], fmt_v(m[5]), m[2], m[1])
    if t == 'acked':
        return 'ACCEPTED(%s, slot %d=%s) %d->%d' % (fmt_b(m[3]), m[4], fmt_v(m[5]), m[2], m[1])
    if t == 'commit':
        return 'COMMIT(%s, cp=%d) %d->%d' % (fmt_b(m[3]), m[4], m[2], m[1])
    if t == 'fetch':
        return 'FETCH(from=%d%s) %d->%d' % (m[3], '' if m[4] is None else ', slot=%d' % m[4], m[2], m[1])
    if t == 'freply':
        return 'FETCH-REPLY([%s]) %d->%d' % (', '.join('%d:%s' % (s, fmt_v(v)) for s, v in m[3]), m[2], m[1])
    return str(m)


def fmt_act(a):
    k = a[0]
    if k == 'deliver':
        return 'deliver%s %s' % ('' if a[2] else '(dup)', fmt_msg(a[1]))
    if k == 'drop':
        return 'drop    ' + fmt_msg(a[1])
    if k == 'cand':
        return 'replica %d starts candidacy %s' % (a[1], fmt_b((a[3], a[2], a[1])))
    if k == 'propose':
        return 'leader %d proposes %s' % (a[1], fmt_v(a[2]))
    if k == 'commit':
        return 'leader %d sends COMMIT' % a[1]
    if k == 'fetch':
        return 'replica %d sends FETCH to %d' % (a[1], a[2])
    return str(a)


def pretty(members, S, V, t):
    """Replay t and print each action plus what it causes."""
    w = World(members, S, V)
    out = []
    for i, a in enumerate(t):
        n0 = len(w.notes)
        w.apply(a)
        extra = ''
        if a[0] == 'deliver' and a[1][0] == 'prom':
            c = w.reps[a[1][1]]
            if c.role == 'lead' and c.ballot == a[1][3]:
                extra = '   => leader %d proposes {%s}%s' % (c.id, ', '.join('%d:%s' % (s, fmt_v(v)) for s, v in sorted(c.props.items())),
                                                            ' [blocked by R1]' if c.blocked else '')
        out.append('%3d. %s%s' % (i + 1, fmt_act(a), extra))
        for n in w.notes[n0:]:
            out.append('       ** ' + n)
    out.append('VIOLATION: ' + str(w.viol))
    return '\n'.join(out)


def worker(args):
    members, S, V, seeds, maxsteps, budget = args
    best = None
    nviol = 0
    kinds = {}
    for sd in seeds:
        t, why = run_one(members, S, V, sd, maxsteps, budget)
        if t is not None:
            nviol += 1
            kk = why.split(':')[0]
            kinds[kk] = kinds.get(kk, 0) + 1
            if best is None or len(t) < len(best[1]):
                best = (sd, t, why)
    return nviol, kinds, best


CONFIGS = {
    '3to3': {0: (0, 1, 2), 1: (1, 2, 3)},
    '5to3': {0: (0, 1, 2, 3, 4), 1: (2, 3, 4)},
    '3disj': {0: (0, 1, 2), 1: (3, 4, 5)},
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--config', default='3to3')
    ap.add_argument('--variant', default='')
    ap.add_argument('--runs', type=int, default=20000)
    ap.add_argument('--seed0', type=int, default=0)
    ap.add_argument('--slots', type=int, default=3)
    ap.add_argument('--steps', type=int, default=120)
    ap.add_argument('--b0', type=int, default=3, help='epoch-0 candidacies')
    ap.add_argument('--b1', type=int, default=2, help='epoch-1 candidacies')
    ap.add_argument('--procs', type=int, default=2)
    a = ap.parse_args()
    members = CONFIGS[a.config]
    V = frozenset(x for x in a.variant.split(',') if x)
    budget = {0: a.b0, 1: a.b1}
    chunks = 50
    seeds = list(range(a.seed0, a.seed0 + a.runs))
    jobs = [(members, a.slots, V, seeds[i::chunks], a.steps, budget) for i in range(chunks)]
    t0 = time.time()
    with mp.Pool(a.procs) as p:
        res = p.map(worker, jobs)
    nviol = sum(r[0] for r in res)
    kinds = {}
    for r in res:
        for k, v in r[1].items():
            kinds[k] = kinds.get(k, 0) + v
    bests = [r[2] for r in res if r[2]]
    print('config=%s variant=%s runs=%d seeds=[%d,%d) slots=%d steps=%d budget=%s time=%.0fs'
          % (a.config, ','.join(sorted(V)) or 'R1-R4', a.runs, a.seed0, a.seed0 + a.runs, a.slots, a.steps, budget, time.time() - t0))
    print('violating runs: %d  kinds=%s' % (nviol, kinds))
    if bests:
        bests.sort(key=lambda x: len(x[1]))
        mins = []
        for sd, t, why in bests[:5]:
            mt = minimize(members, a.slots, V, t)
            mins.append((len(mt), sd, mt))
        mins.sort(key=lambda x: x[0])
        L, sd, mt = mins[0]
        print('shortest minimized counterexample: seed=%d, %d actions' % (sd, L))
        print(pretty(members, a.slots, V, mt))


if __name__ == '__main__':
    main()
