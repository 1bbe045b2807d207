# plot.gp: expert-choice-lm, validation bits per byte of the byte-level LM: Switch top-1 against
# expert choice (ec_factor 1) evaluated as trained (full: each expert picks over the whole pass,
# later tokens included) and causal-safely (prefix, position, topk: moe.ec_eval), from OUT/runs.csv
# (each dot one seed, coloured by seed: the README's comparisons are paired by seed) and
# OUT/table.csv (mean, bars = sample SD over the seeds)
#   gnuplot -e "out='results/expert-choice-lm'" experiments/expert-choice-lm/plot.gp
# draws OUT/expert-choice-lm.png
if (!exists("out")) out = "results/expert-choice-lm"
set datafile separator ","
set terminal pngcairo size 900,450 font ",10"
set output out."/expert-choice-lm.png"
# systems in table.csv order; idx(name) = its 0-based position
S = " "
stats out."/table.csv" every ::1 using (S = S.strcol(1)." ", 0) nooutput
n = words(S)
idx(s) = (p = strstrt(S, " ".s." "), p ? words(S[1:p]) : NaN)
stats out."/table.csv" every ::1::1 using 5 nooutput
base = STATS_min
stats out."/runs.csv" every ::1 using 2 nooutput
nseed = int(STATS_max)
set title "Byte-level LM on fortunes: expert choice (ec\\_factor 1) evaluated as trained (full) and causal-safely (lower is better)\ndots: one per seed; diamond and bars: mean ± sample SD over ".nseed." seeds; dashed: Switch top-1 mean"
set ylabel "validation bits per byte"
set xrange [-0.6:n-0.4]
set xtics nomirror
set grid ytics lc rgb "#dddddd"
set key top left box opaque samplen 1
set arrow from -0.6, base to n-0.4, base nohead dt 2 lc rgb "#888888"
seedc = "#1f77b4 #ff7f0e #2ca02c #9467bd #8c564b #e377c2 #7f7f7f"
plot for [sd=1:nseed] out."/runs.csv" every ::1 using (idx(strcol(1)) - 0.25 + 0.05*(sd - 1)):($2 == sd ? $5 : 1/0) \
         with points pt 7 ps 0.8 lc rgb word(seedc, sd) title "seed ".sd, \
     out."/table.csv" every ::1 using 0:(1/0):xticlabels(1) with points notitle, \
     out."/table.csv" every ::1 using ($0 + 0.15):5:6 \
         with yerrorbars pt 13 ps 1.2 lc rgb "#d62728" title "mean ± SD"
