# plot.gp: Jacobs et al. (1991) vowels, epochs to the 88% training-accuracy criterion. Left: every
# reported seed (1-25) at each system's chosen step, from OUT/curves.csv (a run's last row is its
# criterion epoch), with mean ± sample SD from OUT/table.csv. Right: the step-size search on seeds
# 101-105, mean ± sample SD per grid step from OUT/lr_search.csv (only means are committed there).
#   gnuplot -e "out='results/jacobs1991'" experiments/jacobs1991/plot.gp
# draws OUT/jacobs1991.png
if (!exists("out")) out = "results/jacobs1991"
set datafile separator ","
set terminal pngcairo size 1100,470 font ",10"
set output out."/jacobs1991.png"
# systems in table.csv order; idx(name) = its 0-based position
S = " "
stats out."/table.csv" every ::1 using (S = S.strcol(1)." ", 0) nooutput
n = words(S)
idx(s) = (p = strstrt(S, " ".s." "), p ? words(S[1:p]) : NaN)
# tick label: "mixture-4-nll", "1" -> "4 experts / nll / step 1"; "bp-6" -> "back-prop / 6 hidden / step .."
lbl(s, lr) = (s[1:8] eq "mixture-" ? s[9:9]." experts\n".s[11:] : "back-prop\n".s[4:]." hidden")."\nstep ".lr
col = "#1f77b4 #ff7f0e #2ca02c #d62728 #9467bd #8c564b"
# criterion epoch of every (system, seed): the last row of that run in curves.csv
crit = sprintf("< awk -F, 'NR > 1 { k = $1 \",\" $3; if (!(k in e)) o[++m] = k; e[k] = $4 } END { for (i = 1; i <= m; i++) print o[i] \",\" e[o[i]] }' %s/curves.csv", out)
set multiplot layout 1,2 title "Vowels (Peterson and Barney), epochs to 88% training accuracy, full-batch gradient descent (lower is faster)"
set title "at each system's chosen step, 25 seeds\ndots: one per seed; diamond and bars: mean ± sample SD"
set ylabel "epochs to criterion"
set xrange [-0.6:n-0.4]
set yrange [0:*]
set xtics nomirror font ",9"
set bmargin 5
set grid ytics lc rgb "#dddddd"
set key off
# crit rows: system, seed, epoch
plot for [i=1:n] crit using (idx(strcol(1)) - 0.35 + 0.02*$2):(strcol(1) eq word(S, i) ? $3 : 1/0) \
         with points pt 7 ps 0.45 lc rgb word(col, i), \
     out."/table.csv" every ::1 using ($0):(-1):xticlabels(lbl(strcol(1), strcol(2))) with points notitle, \
     out."/table.csv" every ::1 using ($0 + 0.3):8:9 \
         with yerrorbars pt 13 ps 1.2 lc rgb "black"
set title "step-size search, seeds 101-105: mean ± sample SD over the runs\nthat reached the criterion (none at a missing point)"
set xlabel "step size"
set ylabel "epochs to criterion (log scale)"
set logscale xy
set xrange [0.007:14]
set yrange [30:30000]
set xtics (0.01, 0.03, 0.1, 0.3, 1, 3, 10) font ",10"
set key top right box opaque samplen 2 font ",9"
set arrow from 0.3, 30 to 0.3, 30000 nohead dt 2 lc rgb "#888888"
set label "common step 0.3" at 0.33, 45 font ",9" tc rgb "#666666"
plot for [i=1:n] out."/lr_search.csv" every ::1 using ($2):(strcol(1) eq word(S, i) ? $6 : 1/0):7 \
         with yerrorlines pt 7 ps 0.6 lc rgb word(col, i) title word(S, i)
unset multiplot
