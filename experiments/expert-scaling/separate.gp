# separate.gp: expert-scaling/separate.sh, validation bits per byte of the byte-level LM against the number
# of experts E, with tokens dropped over capacity (training capacity factor 1.25, evaluation 2.0), the same
# checkpoints evaluated dropless, and trained dropless; left at run.sh's 1.5M training tokens, right at 4x
# that. Mean ± sample SD over the seeds, from OUT/table.csv; dashed: the dense model (E = 1) of that panel.
#   gnuplot -e "out='results/expert-scaling/separate'" experiments/expert-scaling/separate.gp
# draws OUT/separate.png
if (!exists("out")) out = "results/expert-scaling/separate"
set datafile separator ","
set terminal pngcairo size 1100,450 font ",10"
set output out."/separate.png"
# the part of a system's name after its first "-" ("E64-x4-dropless" -> "-x4-dropless"; "E64" -> "")
tail(s) = strstrt(s, "-") ? s[strstrt(s, "-"):] : ""
pick(suf, y) = tail(strcol(1)) eq suf && strcol(1) ne "E1" && strcol(1) ne "E1-x4" ? y : 1/0
stats out."/table.csv" every ::1 using (strcol(1) eq "E1" ? $7 : 1/0) nooutput
dense1 = STATS_min
stats out."/table.csv" every ::1 using (strcol(1) eq "E1-x4" ? $7 : 1/0) nooutput
dense4 = STATS_min
stats out."/table.csv" every ::1 using 2 nooutput
nseed = int(STATS_max)
set multiplot layout 1,2 title "Byte-level LM on fortunes, Switch top-1, expert width 128, fixed active parameters: what the drops cost at large E (lower is better)\nmean ± sample SD over ".nseed." seeds; dashed: the dense model (E = 1)"
set grid xtics ytics lc rgb "#dddddd"
set ylabel "validation bits per byte"
set xlabel "experts per sparse layer E"
set key top left box opaque samplen 2 font ",9"
set offsets 0, 0, graph 0.3, 0
set logscale x 2
set xrange [6:80]
set title sprintf("1.5M training tokens (run.sh's budget); dense: %.3f", dense1)
set arrow 1 from 6, dense1 to 80, dense1 nohead dt 2 lc rgb "#888888"
plot out."/table.csv" every ::1 using ($5 * 0.97):(pick("", $7)):(pick("", $8)) with yerrorlines pt 7 lw 1.5 \
         lc rgb "#d62728" title "drops (capacity factor 1.25 / 2.0)", \
     "" every ::1 using 5:(pick("", $9)):(pick("", $10)) with yerrorlines pt 6 lw 1 dt 3 lc rgb "#d62728" \
         title "same checkpoints, evaluated dropless", \
     "" every ::1 using ($5 * 1.03):(pick("-dropless", $7)):(pick("-dropless", $8)) with yerrorlines pt 5 lw 1.5 \
         lc rgb "#1f77b4" title "trained and evaluated dropless"
unset arrow 1
set title sprintf("4x the training tokens (6.1M); dense: %.3f (above the panel)", dense4)
unset key

plot out."/table.csv" every ::1 using ($5 * 0.97):(pick("-x4", $7)):(pick("-x4", $8)) with yerrorlines pt 7 \
         lw 1.5 lc rgb "#d62728" title "drops", \
     "" every ::1 using 5:(pick("-x4", $9)):(pick("-x4", $10)) with yerrorlines pt 6 lw 1 dt 3 lc rgb "#d62728" \
         title "evaluated dropless", \
     "" every ::1 using ($5 * 1.03):(pick("-x4-dropless", $7)):(pick("-x4-dropless", $8)) with yerrorlines pt 5 \
         lw 1.5 lc rgb "#1f77b4" title "dropless"
unset multiplot
