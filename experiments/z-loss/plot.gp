# plot.gp: router z-loss on/off across learning rates (experiments/z-loss/run.sh), from OUT/runs.csv
# and OUT/curves.csv. Left: validation bits per byte of every finished run against the learning
# rate (dots: one per seed, offset sideways by z-weight; a diverged run is drawn as a cross on the
# "diverged" line at the top). Middle: the validation split's max/mean expert load (1 = even, 8 = every
# token to one expert), mean over the two MoE layers. Right: training loss (split=batch rows, 100-step means) of every
# seed at the largest learning rate.
#   gnuplot -e "out='results/z-loss'" experiments/z-loss/plot.gp
# draws OUT/z-loss.png
if (!exists("out")) out = "results/z-loss"
set datafile separator ","
set terminal pngcairo size 1500,480 font ",10"
set output out."/z-loss.png"
r = out."/runs.csv"
stats r every ::1 using 8 nooutput
ylo = STATS_min; yhi = STATS_max
top = yhi + 0.15 * (yhi - ylo + 0.05)
stats r every ::1 using 3 nooutput
lrmax = STATS_max
set multiplot layout 1,3 title "Router z-loss (ST-MoE) in the byte-level LM on fortunes: Switch top-1, 8 experts, blocks 1 and 3, 1.5M training tokens"
set grid lc rgb "#dddddd"
set logscale x
set xrange [0.0015:0.15]
set xlabel "learning rate (AdamW, constant, clip 1)"
set ylabel "validation bits per byte (lower is better)"
set title "final quality per seed; crosses on the top line: diverged (non-finite loss)"
set yrange [ylo - 0.05 : top + 0.05]
set arrow from graph 0, first top to graph 1, first top nohead dt 3 lc rgb "#888888"
set label "diverged" at graph 0.02, first top offset 0,0.7 tc rgb "#888888"
set key bottom right opaque
plot r every ::1 using ($4 == 0 && $5 == 0 ? $3 * 0.93 : 1/0):8 with points pt 7 ps 0.8 lc rgb "#7f7f7f" title "z-loss off", \
     r every ::1 using ($4 > 0 && $5 == 0 ? $3 * 1.07 : 1/0):8 with points pt 7 ps 0.8 lc rgb "#d62728" title "z-loss 0.001", \
     r every ::1 using ($4 == 0 && $5 == 1 ? $3 * 0.93 : 1/0):(top) with points pt 2 ps 1.5 lc rgb "#7f7f7f" notitle, \
     r every ::1 using ($4 > 0 && $5 == 1 ? $3 * 1.07 : 1/0):(top) with points pt 2 ps 1.5 lc rgb "#d62728" notitle
unset arrow; unset label
set autoscale y
set yrange [0.9:8.5]
set ylabel "validation max/mean expert load (8 = all to one expert)"
set title "expert load at the end, per seed"
set key top left opaque
plot r every ::1 using ($4 == 0 && $5 == 0 ? $3 * 0.93 : 1/0):12 with points pt 7 ps 0.8 lc rgb "#7f7f7f" title "z-loss off", \
     r every ::1 using ($4 > 0 && $5 == 0 ? $3 * 1.07 : 1/0):12 with points pt 7 ps 0.8 lc rgb "#d62728" title "z-loss 0.001"
unset logscale x
set xrange [*:*]
set autoscale y
set xlabel "training step"
set ylabel "training loss, nats/token (100-step means)"
set title sprintf("training loss at lr %g, every seed", lrmax)
set key top right
c = out."/curves.csv"
pre0 = sprintf("lr%g-z0", lrmax)
pre1 = sprintf("lr%g-z0.001", lrmax)
plot for [sd=1:5] c every ::1 using (strcol(1) eq pre0 && $2 == sd ? $3 : 1/0):4 with lines lw 1.5 lc rgb "#7f7f7f" title (sd == 1 ? "z-loss off" : ""), \
     for [sd=1:5] c every ::1 using (strcol(1) eq pre1 && $2 == sd ? $3 : 1/0):4 with lines lw 1.5 lc rgb "#d62728" title (sd == 1 ? "z-loss 0.001" : "")
unset multiplot
