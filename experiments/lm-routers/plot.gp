# plot.gp: validation bits per byte of every router in the byte-level LM against the dense model of
# the same active size, from OUT/runs.csv (each dot one seed, coloured by seed: the README's
# comparisons are paired by seed; seeds 1 to the largest in runs.csv, at most 5 colours) and OUT/table.csv (mean, bars = sample SD over the seeds)
#   gnuplot -e "out='results/lm-routers'" experiments/lm-routers/plot.gp
# draws OUT/lm-routers.png
if (!exists("out")) out = "results/lm-routers"
set datafile separator ","
set terminal pngcairo size 900,450 font ",10"
set output out."/lm-routers.png"
# systems in table.csv order; idx(name) = its 0-based position
S = " "
stats out."/table.csv" every ::1 using (S = S.strcol(1)." ", 0) nooutput
n = words(S)
idx(s) = (p = strstrt(S, " ".s." "), p ? words(S[1:p]) : NaN)
stats out."/table.csv" every ::1::1 using 5 nooutput
dense = STATS_min
stats out."/runs.csv" every ::1 using 2 nooutput
ns = int(STATS_max)
set title "Byte-level LM on fortunes, routers at equal active parameters (1.5M training tokens; lower is better)\ndots: one per seed; diamond and bars: mean ± sample SD over ".ns." seeds; dashed: dense mean"
set ylabel "validation bits per byte"
set xrange [-0.6:n-0.4]
set xtics nomirror
set grid ytics lc rgb "#dddddd"
set key bottom left box opaque samplen 1
set arrow from -0.6, dense to n-0.4, dense nohead dt 2 lc rgb "#888888"
seedc = "#1f77b4 #ff7f0e #2ca02c #9467bd #8c564b"
plot for [sd=1:ns] out."/runs.csv" every ::1 using (idx(strcol(1)) - 0.22 + 0.06*(sd - 1)):($2 == sd ? $5 : 1/0) \
         with points pt 7 ps 0.8 lc rgb word(seedc, sd) title "seed ".sd, \
     out."/table.csv" every ::1 using 0:(1/0):xticlabels(1) with points notitle, \
     out."/table.csv" every ::1 using ($0 + 0.15):5:6 \
         with yerrorbars pt 13 ps 1.2 lc rgb "#d62728" title "mean ± SD"
