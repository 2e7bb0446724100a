"""Statistics, numpy only and pure: paired bootstrap, sign-flip, t and TOST (:mod:`~lorakit.stats.paired`),
the joint bootstrap of seeds × examples (:mod:`~lorakit.stats.bootstrap`), the Student t without scipy
(:mod:`~lorakit.stats.tdist`), Spearman's ρ and permutation tests (:mod:`~lorakit.stats.correlation`) and
the magnitude-variance study's ratio bootstrap and fixed effects (:mod:`~lorakit.stats.mv_study`)."""
