"""Hand-directed traces: confirm that the model can reach the predicted counterexamples."""
from checker import *

def run(members, V, steps):
    w = World(members, 3, V)
    trace = []
    for st in steps:
        if st[0] == 'd':   # deliver first msg matching (type,to,frm,slot-or-None)
            _, typ, to, frm = st[:4]; slot = st[4] if len(st) > 4 else None
            ms = [m for m in w.msgs if m[0] == typ and m[1] == to and m[2] == frm and (slot is None or m[4] == slot)]
            assert ms, ('no msg', st)
            a = ('deliver', ms[-1], True)
        else:
            a = st
        assert w.apply(a), a
        trace.append(a)
        if w.viol: break
    return pretty(members, 3, V, trace)

M = CONFIGS['3to3']
SS = lambda r: ('ss', 0, r)
noflag = [
 ('cand', 1, 1, 0), ('d','prep',1,1), ('d','prep',2,1), ('d','prom',1,1), ('d','prom',1,2),
 ('propose', 1, SS(1), (0,1,1)), ('d','acc',0,1),
 ('cand', 0, 2, 0), ('d','prep',1,0), ('d','prep',2,0), ('d','prom',0,1), ('d','prom',0,2),
 ('propose', 0, ('v',2,0), (0,2,0)), ('propose', 0, ('v',2,1), (0,2,0)),
 ('d','acc',1,0,1), ('d','acc',2,0,1), ('d','acked',0,1,1), ('d','acked',0,2,1),
 ('cand', 1, 3, 0), ('d','prep',0,1), ('d','prep',1,1), ('d','prom',1,0), ('d','prom',1,1),
 ('d','acc',0,1,0), ('d','acc',1,1,0),
]
r4bad = [
 ('cand', 1, 1, 0), ('d','prep',1,1), ('d','prep',2,1), ('d','prom',1,1), ('d','prom',1,2),
 ('propose', 1, SS(1), (0,1,1)), ('d','acc',0,1), ('d','acc',1,1), ('d','acked',1,0), ('d','acked',1,1),
 ('cand', 1, 1, 1), ('d','prep',1,1), ('d','prep',3,1), ('d','prom',1,1), ('d','prom',1,3),
 ('propose', 1, ('w',1,1), (1,1,1)), ('d','acc',1,1,1), ('d','acc',3,1,1), ('d','acked',1,1,1), ('d','acked',1,3,1),
 ('fetch', 0, 1, 1), ('d','fetch',1,0), ('d','freply',0,1),
 ('cand', 2, 2, 0), ('d','prep',0,2), ('d','prep',2,2), ('d','prom',2,0), ('d','prom',2,2),
 ('d','acc',0,2,0), ('d','acc',2,2,0),
]
for name, V, steps in [('noflag', {'noflag'}, noflag), ('R1-R4 on noflag trace', set(), noflag),
                       ('r4bad', {'r4bad'}, r4bad), ('R1-R4 on r4bad trace', set(), r4bad)]:
    print('=====', name)
    try:
        print(run(M, frozenset(V), steps))
    except AssertionError as e:
        print('trace not executable under these rules:', e)
