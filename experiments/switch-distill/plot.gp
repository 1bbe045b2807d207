# plot.gp: switch-distill, test quality of every system (teacher, dense baseline, distilled students
# and, for the LM, the two controls), from OUT/runs.csv (each dot one seed, coloured by seed: the
# README's comparisons are paired by seed) and OUT/table.csv (mean, bars = sample SD over the seeds).
# Dashed line: baseline mean; dotted: teacher mean (the "gap" is between them).
#   gnuplot -e "out='results/switch-distill'" experiments/switch-distill/plot.gp      (Fashion-MNIST)
#   gnuplot -e "out='results/switch-distill/lm'" experiments/switch-distill/plot.gp   (byte-level LM)
# draws OUT/switch-distill.png, or OUT/switch-distill-lm.png for an OUT ending in /lm
if (!exists("out")) out = "results/switch-distill"
lm = strlen(out) >= 3 && out[strlen(out)-2:] eq "/lm"
set datafile separator ","
set terminal pngcairo size 900,450 font ",10"
set output out.(lm ? "/switch-distill-lm.png" : "/switch-distill.png")
# systems in table.csv order; idx(name) = its 0-based position
S = " "
stats out."/table.csv" every ::1 using (S = S.strcol(1)." ", 0) nooutput
n = words(S)
idx(s) = (p = strstrt(S, " ".s." "), p ? words(S[1:p]) : NaN)
# column 5 of both files: test accuracy (shown in %) or test bits per byte
scale = lm ? 1 : 100
stats out."/table.csv" every ::1 using (strcol(1) eq "baseline" ? scale*$5 : NaN) nooutput
base = STATS_min
stats out."/table.csv" every ::1 using (strcol(1) eq "teacher" ? scale*$5 : NaN) nooutput
teach = STATS_min
stats out."/runs.csv" every ::1 using 2 nooutput
nseed = int(STATS_max)
step = nseed > 3 ? 0.05 : 0.07
if (lm) {
  set title "Switch teacher distilled into a dense student, byte-level LM on fortunes (lower is better)\ndots: one per seed; diamond and bars: mean ± sample SD over ".nseed." seeds; dashed: baseline mean; dotted: teacher mean"
  set ylabel "validation bits per byte"
} else {
  set title "Switch teacher distilled into a dense student, Fashion-MNIST (higher is better)\ndots: one per seed; diamond and bars: mean ± sample SD over ".nseed." seeds; dashed: baseline mean; dotted: teacher mean"
  set ylabel "test accuracy (%)"
}
set xrange [-0.6:n-0.4]
set xtics nomirror
set grid ytics lc rgb "#dddddd"
set key box opaque samplen 1
if (lm) { set key bottom left } else { set key top left }
set arrow from -0.6, base to n-0.4, base nohead dt 2 lc rgb "#888888"
set arrow from -0.6, teach to n-0.4, teach nohead dt 3 lc rgb "#888888"
seedc = "#1f77b4 #ff7f0e #2ca02c #9467bd #8c564b #e377c2 #7f7f7f"
plot for [sd=1:nseed] out."/runs.csv" every ::1 using (idx(strcol(1)) - 0.2 + step*(sd - 1)):($2 == sd ? scale*$5 : 1/0) \
         with points pt 7 ps 0.8 lc rgb word(seedc, sd) title "seed ".sd, \
     out."/table.csv" every ::1 using 0:(1/0):xticlabels(1) with points notitle, \
     out."/table.csv" every ::1 using ($0 + 0.15):(scale*$5):(scale*$6) \
         with yerrorbars pt 13 ps 1.2 lc rgb "#d62728" title "mean ± SD"
