# plot.gp: expert-scaling, validation bits per byte of the byte-level LM against the number of experts E
# (left; E = 1 is the dense model) and against the total parameter count (right), at fixed k = 1 and
# expert width 128 (fixed active parameters), from OUT/runs.csv (each dot one seed, coloured by seed)
# and OUT/table.csv (mean, bars = sample SD over the seeds)
#   gnuplot -e "out='results/expert-scaling'" experiments/expert-scaling/plot.gp
# draws OUT/expert-scaling.png
if (!exists("out")) out = "results/expert-scaling"
set datafile separator ","
set terminal pngcairo size 1100,450 font ",10"
set output out."/expert-scaling.png"
stats out."/runs.csv" every ::1 using 2 nooutput
nseed = int(STATS_max)
stats out."/table.csv" every ::1::1 using 7 nooutput
dense = STATS_min   # the dense model (E = 1) is the first row
seedc = "#1f77b4 #ff7f0e #2ca02c #9467bd #8c564b #e377c2 #7f7f7f"
set multiplot layout 1,2 title "Byte-level LM on fortunes, Switch top-1, expert width 128: more experts at fixed active parameters (1.5M training tokens; lower is better)\ndots: one per seed; diamond and bars: mean ± sample SD over ".nseed." seeds; dashed: dense (E = 1) mean"
set grid xtics ytics lc rgb "#dddddd"
set ylabel "validation bits per byte"
set key top center box opaque samplen 1 font ",9" maxrows 3
set logscale x 2
set xrange [0.7:90]
set xlabel "experts per sparse layer E (E = 1: dense)"
set arrow 1 from 0.7, dense to 90, dense nohead dt 2 lc rgb "#888888"
plot for [sd=1:nseed] out."/runs.csv" every ::1 using ($5 * (1 + 0.04*(sd - (nseed+1)/2.0))):($2 == sd ? $6 : 1/0) \
         with points pt 7 ps 0.6 lc rgb word(seedc, sd) title "seed ".sd, \
     out."/table.csv" every ::1 using 5:7:8 with yerrorlines pt 13 ps 1.2 lw 1.5 lc rgb "#d62728" title "mean ± SD"
unset arrow 1
unset key
set yrange [GPVAL_Y_MIN:GPVAL_Y_MAX]
set logscale x 10
set xrange [1.4e5:3e6]
set xlabel "total parameters (active: 169-177k in every model)"
set xtics ("150k" 1.5e5, "200k" 2e5, "300k" 3e5, "500k" 5e5, "1M" 1e6, "2M" 2e6)
set arrow 2 from 1.4e5, dense to 3e6, dense nohead dt 2 lc rgb "#888888"
plot for [sd=1:nseed] out."/runs.csv" every ::1 using 4:($2 == sd ? $6 : 1/0) \
         with points pt 7 ps 0.6 lc rgb word(seedc, sd) notitle, \
     out."/table.csv" every ::1 using 4:7:8 with yerrorlines pt 13 ps 1.2 lw 1.5 lc rgb "#d62728" notitle, \
     out."/table.csv" every ::1 using 4:($7 - $8):(sprintf("E=%s", strcol(1)[2:])) with labels offset 0,-0.8 font ",8" notitle
unset multiplot
