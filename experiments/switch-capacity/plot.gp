# plot.gp: Switch capacity factor sweep (section 1 of the README), from OUT/capacity-runs.csv (each
# dot one seed) and OUT/capacity.csv (lines: means; bars: sample SD over the seeds). Two panels
# against the training capacity factor: test accuracy evaluated at the training cf and at cf 2.0;
# the fraction of tokens dropped in training and in evaluation at the training cf.
#   gnuplot -e "out='results/switch-capacity'" experiments/switch-capacity/plot.gp
# draws OUT/switch-capacity.png
if (!exists("out")) out = "results/switch-capacity"
set datafile separator ","
set terminal pngcairo size 1000,450 font ",10"
set output out."/switch-capacity.png"
runs = out."/capacity-runs.csv"
mean = out."/capacity.csv"
set xrange [0.4:2.1]
set xtics (0.5, 0.75, 1.0, 1.25, 2.0) nomirror
set xlabel "training capacity factor cf (capacity = ceil(cf·T/E) per batch)"
set grid ytics lc rgb "#dddddd"
ca = "#1f77b4"; cb = "#d62728"
stats runs every ::1 using 2 nooutput
nseed = int(STATS_max)
set multiplot layout 1,2 title "Switch top-1, 8 experts, Fashion-MNIST, α = 0.01 (dots: one per seed; lines: mean; bars: sample SD over ".nseed." seeds)"
set title "test accuracy (higher is better)"
set ylabel "test accuracy (%)"
set key bottom right box opaque samplen 2
plot runs every ::1 using ($1 - 0.035):(100*$5) with points pt 7 ps 0.6 lc rgb ca notitle, \
     runs every ::1 using ($1 + 0.035):(100*$7) with points pt 7 ps 0.6 lc rgb cb notitle, \
     mean every ::1 using 1:(100*$7):(100*$8) with yerrorlines pt 13 lc rgb ca title "evaluated at the training cf", \
     mean every ::1 using 1:(100*$11):(100*$12) with yerrorlines pt 13 lc rgb cb title "evaluated at cf 2.0 (no drops)"
set title "tokens dropped at capacity (lower is better)"
set ylabel "dropped (% of assignments, mean over 2 layers)"
set yrange [0:*]
set key top right box opaque samplen 2
plot runs every ::1 using ($1 - 0.035):(100*$3) with points pt 7 ps 0.6 lc rgb ca notitle, \
     runs every ::1 using ($1 + 0.035):(100*$4) with points pt 7 ps 0.6 lc rgb cb notitle, \
     mean every ::1 using 1:(100*$3):(100*$4) with yerrorlines pt 13 lc rgb ca title "training (jitter on, T = 128)", \
     mean every ::1 using 1:(100*$5):(100*$6) with yerrorlines pt 13 lc rgb cb title "test split at the training cf (T = 2000)"
unset multiplot
