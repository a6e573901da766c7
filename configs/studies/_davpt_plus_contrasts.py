# The one-change-at-a-time questions both studies ask (a file the study files inherit with
# `_base_`, not a study). DA-VPT+ changes two things at once, the guidance and the key/value
# offsets, and the detached forms change one: each question is a variant against the arm
# that differs from it by that one thing.
contrasts = [
    dict(variant='vpt-deep-kv', against='vpt-deep', question='the offsets alone'),
    dict(variant='davpt-plus', against='vpt-deep-kv',
         question="the paper's guidance on top of the offsets"),
    dict(variant='davpt-plus-detach', against='vpt-deep-kv',
         question='the detached guidance on top of the offsets'),
    dict(variant='davpt-plus', against='davpt',
         question="the offsets on top of the paper's guidance"),
    dict(variant='detach-data', against='davpt', question='detaching the data side (DA-VPT)'),
    dict(variant='davpt-plus-detach', against='davpt-plus',
         question='detaching the data side (DA-VPT+)'),
]
