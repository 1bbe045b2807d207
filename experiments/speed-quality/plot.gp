# plot.gp: speed-quality, validation bits per byte of the byte-level LM (dense, Switch top-1, top-2)
# against training time on this machine (left: step x the system's median `moe bench` step time) and
# against training steps (middle), and the bench step times per interleaved round (right: the three
# of the time axis, the sparse ones dropless, and the sparse ones at capacity factor 1.25), from
# OUT/curves.csv (thin lines: one per seed), OUT/curves_mean.csv (thick: mean over seeds),
# OUT/runs.csv (the dense targets) and OUT/bench.csv
#   gnuplot -e "out='results/speed-quality'" experiments/speed-quality/plot.gp
# draws OUT/speed-quality.png
if (!exists("out")) out = "results/speed-quality"
set datafile separator ","
set terminal pngcairo size 1600,500 font ",10"
set output out."/speed-quality.png"
names = "dense switch top2"
colors = "#555555 #1f77b4 #d62728"
label(i) = i == 1 ? "dense" : (i == 2 ? "Switch top-1 of 8" : "softmax top-2 of 8")
stats out."/runs.csv" every ::1 using 2 nooutput
nseed = int(STATS_max)
stats out."/bench.csv" every ::1 using 1 nooutput
nround = int(STATS_max)
stats out."/runs.csv" every ::1 using ((strcol(1) eq "dense") ? $8 : 1/0) nooutput
target = STATS_mean   # mean over seeds of the dense final validation bits/byte
stats out."/curves_mean.csv" every ::1 using ((strcol(1) eq "dense") ? $3 : 1/0) nooutput
tdense = STATS_max    # dense's total training time
set multiplot layout 1,3 title "Byte-level LM on fortunes (n\\_embd 64, 4 blocks, 2 sparse; 750 steps of 2,048 tokens): time to quality on a 2-core CPU, 1 thread\nthin: one line per seed (".nseed." seeds); thick: mean over seeds; dashed: the dense final validation bits/byte (mean over seeds) and dense's total time"
set grid xtics ytics lc rgb "#dddddd"
set key top right box opaque samplen 2 font ",9"
set ylabel "validation bits per byte"
set yrange [2.85:3.4]
set xrange [6:*]
set xlabel "training seconds (steps x fastest bench step time)"
set arrow 1 from graph 0, first target to graph 1, first target nohead dt 2 lc rgb "#888888"
set arrow 2 from first tdense, graph 0 to first tdense, graph 1 nohead dt 2 lc rgb "#888888"
plot for [i=1:3] for [sd=1:nseed] out."/curves.csv" every ::1 using 4:((strcol(1) eq word(names, i) && $2 == sd) ? $5 : 1/0) \
         with lines lw 0.6 lc rgb word(colors, i) notitle, \
     for [i=1:3] out."/curves_mean.csv" every ::1 using 3:((strcol(1) eq word(names, i)) ? $5 : 1/0) \
         with lines lw 2.5 lc rgb word(colors, i) title label(i)
unset arrow 2
set xrange [200:800]
set xlabel "training steps (2,048 tokens each)"
set arrow 3 from first 750, graph 0 to first 750, graph 1 nohead dt 2 lc rgb "#888888"
plot for [i=1:3] for [sd=1:nseed] out."/curves.csv" every ::1 using 3:((strcol(1) eq word(names, i) && $2 == sd) ? $5 : 1/0) \
         with lines lw 0.6 lc rgb word(colors, i) notitle, \
     for [i=1:3] out."/curves_mean.csv" every ::1 using 2:((strcol(1) eq word(names, i)) ? $5 : 1/0) \
         with lines lw 2.5 lc rgb word(colors, i) title label(i)
unset arrow 1
unset arrow 3
set autoscale y
set yrange [0:*]
set xrange [0.5:5.5]
set xtics ("dense" 1, "Switch top-1\ndropless" 2, "top-2\ndropless" 3, "Switch top-1\ncf 1.25, init" 4, "top-2\ncf 1.25, init" 5) font ",8"
bnames = "dense switch top2 switch-cf1.25-init top2-cf1.25-init"
bcolors = "#555555 #1f77b4 #d62728 #9ecae1 #f4a6a6"
set xlabel "moe bench, 1 thread: dots, each round's fastest of 21 repeats;\nbars, the fastest of all rounds (the time axis uses dense and the two dropless)"
set ylabel "milliseconds per training step (2,048 tokens)"
set grid noxtics
unset key
plot for [i=1:5] out."/bench.csv" every ::1 using (i + 0.4 * (($1 - 1) / (nround > 1 ? nround - 1.0 : 1.0) - 0.5)):((strcol(2) eq word(bnames, i)) ? 1000 * $4 : 1/0) \
         with points pt 7 ps 0.8 lc rgb word(bcolors, i), \
     for [i=1:5] out."/steptime.csv" every ::1 using (i):((strcol(1) eq word(bnames, i)) ? 1000 * $4 : 1/0):(0.3):(0) \
         with vectors nohead lw 3 lc rgb word(bcolors, i) , \
     for [i=1:5] out."/steptime.csv" every ::1 using (i - 0.15):((strcol(1) eq word(bnames, i)) ? 1000 * $4 : 1/0):(sprintf("%.1f", 1000 * $4)) \
         with labels offset 0,-0.9 font ",8"
unset multiplot
