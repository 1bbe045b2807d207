# plot.gp: load balance and quality against the training step for the four balancing systems of
# experiments/loss-free/run.sh, from OUT/curves_mean.csv (mean over seeds; system, step, kind, layer,
# runs, mean, sd): MaxVio_batch per layer (per training step, averaged over bins of 47 steps),
# MaxVio_global per layer (whole validation split, at each evaluation) and validation bits per byte
#   gnuplot -e "out='results/loss-free'" experiments/loss-free/plot.gp
# draws OUT/loss-free.png
if (!exists("out")) out = "results/loss-free"
set datafile separator ","
set terminal pngcairo size 1100,800 font ",10"
set output out."/loss-free.png"
f = out."/curves_mean.csv"
sys = "aux loss-free loss-free-1e2 none"
lab = "aux-loss(0.01) loss-free(u=1e-3) loss-free(u=1e-2) no-balancing"
col = "#1f77b4 #d62728 #ff7f0e #7f7f7f"
sel(s, k, l) = (strcol(1) eq s && strcol(3) eq k && (l == 0 || $4 == l))
set multiplot layout 2,2 title "Byte-level LM on fortunes, Switch top-1 of 8 experts in blocks 1 and 3, dropless; mean over seeds (see README)"
set grid lc rgb "#dddddd"
set key top right opaque samplen 2
set xlabel "training step"
set logscale y
set yrange [0.05:10]
set ylabel "MaxVio_{batch} (per step, 47-step bins)"
# dotted: the MaxVio_batch of 2,048 tokens dealt uniformly at random to 8 experts (about 0.09)
set arrow 1 from 0, 0.091 to 752, 0.091 nohead dt 3 lc rgb "#444444"
set title "MaxVio_{batch}, layer 1 (dotted: uniform-random assignment, 0.09)"
plot for [i=1:4] f every ::1 using (sel(word(sys,i), "maxvio_batch", 1) ? $2 : 1/0):6 with lines lw 2 lc rgb word(col,i) title word(lab,i)
set title "MaxVio_{batch}, layer 3 (dotted: uniform-random assignment, 0.09)"
plot for [i=1:4] f every ::1 using (sel(word(sys,i), "maxvio_batch", 3) ? $2 : 1/0):6 with lines lw 2 lc rgb word(col,i) title word(lab,i)
unset arrow 1
set title "MaxVio_{global} on the whole validation split (solid: layer 1, dashed: layer 3)"
set ylabel "MaxVio_{global}"
plot for [i=1:4] f every ::1 using (sel(word(sys,i), "maxvio_global", 1) ? $2 : 1/0):6 with linespoints lw 2 pt 7 ps 0.6 lc rgb word(col,i) title word(lab,i), \
     for [i=1:4] f every ::1 using (sel(word(sys,i), "maxvio_global", 3) ? $2 : 1/0):6 with linespoints lw 2 dt 2 pt 6 ps 0.6 lc rgb word(col,i) notitle
unset logscale y
set title "validation bits per byte from step 188 (lower is better)"
set ylabel "bits per byte"
set xrange [180:760]
set yrange [*:*]
plot for [i=1:4] f every ::1 using (sel(word(sys,i), "valid_bits_per_byte", 0) ? $2 : 1/0):6 with linespoints lw 2 pt 7 ps 0.6 lc rgb word(col,i) title word(lab,i)
unset multiplot
