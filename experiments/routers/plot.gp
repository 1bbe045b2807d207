# plot.gp: test accuracy of every router against the dense model of the same active size, from
# OUT/runs.csv (each dot one seed, coloured by seed: the README's comparisons are paired by seed)
# and OUT/table.csv (mean, bars = sample SD over the seeds)
#   gnuplot -e "out='results/routers'" experiments/routers/plot.gp
# draws OUT/routers.png
if (!exists("out")) out = "results/routers"
set datafile separator ","
set terminal pngcairo size 900,450 font ",10"
set output out."/routers.png"
# systems in table.csv order; idx(name) = its 0-based position
S = " "
stats out."/table.csv" every ::1 using (S = S.strcol(1)." ", 0) nooutput
n = words(S)
idx(s) = (p = strstrt(S, " ".s." "), p ? words(S[1:p]) : NaN)
stats out."/table.csv" every ::1::1 using 5 nooutput
dense = 100 * STATS_min
stats out."/runs.csv" every ::1 using 2 nooutput
nseed = int(STATS_max)
step = nseed > 3 ? 0.05 : 0.07
set title "Fashion-MNIST, every router at equal active parameters (8 epochs; higher is better)\ndots: one per seed; diamond and bars: mean ± sample SD over ".nseed." seeds; dashed: dense mean"
set ylabel "test accuracy (%)"
set xrange [-0.6:n-0.4]
set xtics rotate by 25 right nomirror
set grid ytics lc rgb "#dddddd"
set arrow from -0.6, dense to n-0.4, dense nohead dt 2 lc rgb "#888888"
set key bottom right box opaque samplen 1
# seeds coloured alike across systems: the comparisons in the README are paired by seed
seedc = "#1f77b4 #ff7f0e #2ca02c #9467bd #8c564b #e377c2 #7f7f7f"
plot for [sd=1:nseed] out."/runs.csv" every ::1 using (idx(strcol(1)) - 0.2 + step*(sd - 1)):($2 == sd ? 100*$5 : 1/0) \
         with points pt 7 ps 0.8 lc rgb word(seedc, sd) title "seed ".sd, \
     out."/table.csv" every ::1 using 0:(1/0):xticlabels(1) with points notitle, \
     out."/table.csv" every ::1 using ($0 + 0.15):(100*$5):(100*$6) \
         with yerrorbars pt 13 ps 1.2 lc rgb "#d62728" title "mean ± SD"
