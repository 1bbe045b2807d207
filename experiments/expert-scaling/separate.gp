# separate.gp: expert-scaling/separate.sh, validation bits per byte of the byte-level LM against the number
# of experts E, with tokens dropped over capacity (training capacity factor 1.25, evaluation 2.0), the same
# checkpoints evaluated dropless, and trained dropless; left at run.sh's 1.5M training tokens, right at 4x
# that. Mean ± sample SD over the seeds, from OUT/table.csv; dashed: the dense model (E = 1) of that panel.
#   gnuplot -e "out='results/expert-scaling/separate'" experiments/expert-scaling/separate.gp
# draws OUT/separate.png
if (!exists("out")) out = "results/expert-scaling/separate"
set datafile separator ","
set terminal pngcairo size 1500,470 font ",10"
set output out."/separate.png"
# the part of a system's name after its first "-" ("E64-x4-dropless" -> "-x4-dropless"; "E64" -> "")
tail(s) = strstrt(s, "-") ? s[strstrt(s, "-"):] : ""
pick(suf, y) = tail(strcol(1)) eq suf && strcol(1)[1:3] ne "E1-" && strcol(1) ne "E1" ? y : 1/0
stats out."/table.csv" every ::1 using (strcol(1) eq "E1" ? $7 : 1/0) nooutput
dense1 = STATS_min
stats out."/table.csv" every ::1 using (strcol(1) eq "E1-x4" ? $7 : 1/0) nooutput
dense4 = STATS_min
stats out."/table.csv" every ::1 using (strcol(1) eq "E1-b4" ? $7 : 1/0) nooutput
denseb = STATS_min
# one y range for the two 4x panels: every mean -/+ SD of their sparse systems
big(y) = (strstrt(strcol(1), "-x4") || strstrt(strcol(1), "-b4")) && strcol(1)[1:3] ne "E1-" ? y : 1/0
stats out."/table.csv" every ::1 using (big($7 + $8)) nooutput
y4hi = STATS_max
stats out."/table.csv" every ::1 using (big($7 - $8)) nooutput
y4lo = STATS_min
stats out."/table.csv" every ::1 using 2 nooutput
nseed = int(STATS_max)
set multiplot layout 1,3 title "Byte-level LM on fortunes, Switch top-1, expert width 128, fixed active parameters: what the drops cost at large E (lower is better)\nmean ± sample SD over ".nseed." seeds; dashed: the dense model (E = 1)"
set grid xtics ytics lc rgb "#dddddd"
set ylabel "validation bits per byte"
set xlabel "experts per sparse layer E"
set key top left box opaque samplen 2 font ",9"
set offsets 0, 0, graph 0.3, 0
set logscale x 2
set xrange [6:80]
set title sprintf("1.5M tokens: 750 steps of 2,048 (run.sh); dense %.3f", dense1)
set arrow 1 from 6, dense1 to 80, dense1 nohead dt 2 lc rgb "#888888"
plot out."/table.csv" every ::1 using ($5 * 0.97):(pick("", $7)):(pick("", $8)) with yerrorlines pt 7 lw 1.5 \
         lc rgb "#d62728" title "drops (capacity factor 1.25 / 2.0)", \
     "" every ::1 using 5:(pick("", $9)):(pick("", $10)) with yerrorlines pt 6 lw 1 dt 3 lc rgb "#d62728" \
         title "same checkpoints, evaluated dropless", \
     "" every ::1 using ($5 * 1.03):(pick("-dropless", $7)):(pick("-dropless", $8)) with yerrorlines pt 5 lw 1.5 \
         lc rgb "#1f77b4" title "trained and evaluated dropless"
unset arrow 1
unset key
set offsets 0, 0, 0, 0
m = (y4hi - y4lo) * 0.05
set yrange [y4lo - m:y4hi + m]
do for [v in "x4 b4"] {
    if (v eq "x4") { set title sprintf("6.1M tokens: 3,000 steps of 2,048; dense %.3f", dense4) }
    else { set title sprintf("6.1M tokens: 750 steps of 8,192; dense %.3f", denseb) }
    plot out."/table.csv" every ::1 using ($5 * 0.97):(pick("-".v, $7)):(pick("-".v, $8)) with yerrorlines pt 7 \
             lw 1.5 lc rgb "#d62728", \
         "" every ::1 using 5:(pick("-".v, $9)):(pick("-".v, $10)) with yerrorlines pt 6 lw 1 dt 3 lc rgb "#d62728", \
         "" every ::1 using ($5 * 1.03):(pick("-".v."-dropless", $7)):(pick("-".v."-dropless", $8)) with yerrorlines \
             pt 5 lw 1.5 lc rgb "#1f77b4"
}
unset multiplot
