# plot.gp: moebert, test accuracy of every system right after the dense teacher is split into
# experts ("after conversion", before any training) and after training, from OUT/runs.csv (each dot
# one seed) and OUT/table.csv (diamond and bars: mean ± sample SD over the seeds). Dashed line:
# the dense teacher's mean.
#   gnuplot -e "out='results/moebert'" experiments/moebert/plot.gp
# draws OUT/moebert.png
if (!exists("out")) out = "results/moebert"
set datafile separator ","
set terminal pngcairo size 900,450 font ",10"
set output out."/moebert.png"
# systems in table.csv order; idx(name) = its 0-based position
S = " "
stats out."/table.csv" every ::1 using (S = S.strcol(1)." ", 0) nooutput
n = words(S)
idx(s) = (p = strstrt(S, " ".s." "), p ? words(S[1:p]) : NaN)
stats out."/table.csv" every ::1 using (strcol(1) eq "teacher" ? 100*$7 : NaN) nooutput
teach = STATS_min
stats out."/runs.csv" every ::1 using 2 nooutput
nseed = int(STATS_max)
set title "MoEBERT on Fashion-MNIST: a dense teacher split into 4 experts per FFN, hash routing (higher is better)\ndots: one per seed; diamond and bars: mean ± sample SD over ".nseed." seeds; dashed: dense teacher mean"
set ylabel "test accuracy (%)"
set xrange [-0.6:n-0.4]
set xtics nomirror rotate by 20 right
set grid ytics lc rgb "#dddddd"
set key bottom left box opaque samplen 1
set yrange [79.5:89.5]
set arrow from -0.6, teach to n-0.4, teach nohead dt 2 lc rgb "#888888"
cc = "#1f77b4"; ct = "#d62728"
plot out."/runs.csv" every ::1 using (idx(strcol(1)) - 0.08 - 0.04*(nseed + 1 - $2)):(100*$5) with points pt 6 ps 0.7 lc rgb cc notitle, \
     out."/table.csv" every ::1 using ($0 - 0.08):(100*$5):(100*$6) with yerrorbars pt 12 ps 1.2 lc rgb cc \
         title "after conversion, before training", \
     out."/runs.csv" every ::1 using (idx(strcol(1)) + 0.02 + 0.04*$2):(100*$6) with points pt 7 ps 0.7 lc rgb ct notitle, \
     out."/table.csv" every ::1 using ($0 + 0.28):(100*$7):(100*$8) with yerrorbars pt 13 ps 1.2 lc rgb ct \
         title "after training", \
     out."/table.csv" every ::1 using 0:(1/0):xticlabels(1) with points notitle
