# plot.gp: Shazeer et al. (2017) Table 6 redone: test accuracy and CV(load) against the balancing
# weight w, for E = 8 and 16 experts, from OUT/runs.csv (each dot one seed) and OUT/table.csv
# (lines: means; accuracy bars: sample SD over the seeds). Two panels: accuracy; CV(load) in
# training mode (noise on) and in evaluation mode on the test split.
#   gnuplot -e "out='results/shazeer2017'" experiments/shazeer2017/plot.gp
# draws OUT/shazeer2017.png
if (!exists("out")) out = "results/shazeer2017"
set datafile separator ","
set terminal pngcairo size 1000,450 font ",10"
set output out."/shazeer2017.png"
# w = 0, 0.01, 0.1, 1 at evenly spaced positions (0 has no place on a log axis)
wpos(w) = w == 0 ? 0 : w < 0.05 ? 1 : w < 0.5 ? 2 : 3
# E = 8 left of each w, E = 16 right; within a group the seeds' dots left of the mean
off(e) = e == 8 ? -0.14 : 0.14
stats out."/runs.csv" every ::1 using 3 nooutput
nseed = int(STATS_max)
dot(e, seed) = off(e) - 0.04 - 0.03*(nseed - seed)
set xrange [-0.4:3.4]
set xtics ("0" 0, "0.01" 1, "0.1" 2, "1" 3) nomirror
set xlabel "balancing weight w (w_{importance} = w_{load} = w)"
set grid ytics lc rgb "#dddddd"
c8 = "#1f77b4"; c16 = "#d62728"
set multiplot layout 1,2 title "Noisy top-2 on Fashion-MNIST, ".nseed." seeds (dots: one per seed; lines: mean)"
set title "test accuracy (higher is better)\nbars: sample SD over the seeds"
set ylabel "test accuracy (%)"
set key bottom left box opaque samplen 3
plot out."/runs.csv" every ::1 using (wpos($2) + dot($1, $3)):($1 == 8 ? 100*$4 : 1/0) with points pt 7 ps 0.6 lc rgb c8 notitle, \
     out."/runs.csv" every ::1 using (wpos($2) + dot($1, $3)):($1 == 16 ? 100*$4 : 1/0) with points pt 7 ps 0.6 lc rgb c16 notitle, \
     out."/table.csv" every ::1 using (wpos($2) + off($1)):($1 == 8 ? 100*$4 : 1/0):(100*$5) with yerrorlines pt 13 lc rgb c8 title "E = 8", \
     out."/table.csv" every ::1 using (wpos($2) + off($1)):($1 == 16 ? 100*$4 : 1/0):(100*$5) with yerrorlines pt 13 lc rgb c16 title "E = 16"
set title "CV(load) over experts (lower is more balanced)\nfilled dots: test, no noise; open dots: training mode, noise on"
set ylabel "CV(load), log scale"
set logscale y
set yrange [0.001:3]
set key bottom left box opaque samplen 3
plot out."/runs.csv" every ::1 using (wpos($2) + dot($1, $3)):($1 == 8 ? $6 : 1/0) with points pt 7 ps 0.6 lc rgb c8 notitle, \
     out."/runs.csv" every ::1 using (wpos($2) + dot($1, $3)):($1 == 16 ? $6 : 1/0) with points pt 7 ps 0.6 lc rgb c16 notitle, \
     out."/runs.csv" every ::1 using (wpos($2) + dot($1, $3)):($1 == 8 ? $9 : 1/0) with points pt 6 ps 0.6 lc rgb c8 notitle, \
     out."/runs.csv" every ::1 using (wpos($2) + dot($1, $3)):($1 == 16 ? $9 : 1/0) with points pt 6 ps 0.6 lc rgb c16 notitle, \
     out."/table.csv" every ::1 using (wpos($2) + off($1)):($1 == 8 ? $8 : 1/0) with lines lw 1.5 lc rgb c8 title "E = 8, test (no noise)", \
     out."/table.csv" every ::1 using (wpos($2) + off($1)):($1 == 16 ? $8 : 1/0) with lines lw 1.5 lc rgb c16 title "E = 16, test (no noise)", \
     out."/table.csv" every ::1 using (wpos($2) + off($1)):($1 == 8 ? $13 : 1/0) with lines dt 2 lw 1.5 lc rgb c8 title "E = 8, train (noise on)", \
     out."/table.csv" every ::1 using (wpos($2) + off($1)):($1 == 16 ? $13 : 1/0) with lines dt 2 lw 1.5 lc rgb c16 title "E = 16, train (noise on)"
unset multiplot
