# plot.gp: transfer, the quality every way of adapting reaches on the new domain, with the fraction
# of parameters it tunes under its name. One panel per domain: Fashion-MNIST classes 0-4 -> 5-9
# (test accuracy), UDHR 11 languages -> Greek and -> German (bits per byte). From OUT/runs.csv (each
# dot one seed; every seed has its own base) and OUT/table.csv (diamond and bars: mean ± sample SD
# over the seeds). Dashed line: full fine-tuning's mean; dotted: training from scratch.
# Points beyond the plotted range are drawn at its edge, with their mean written beside.
#   gnuplot -e "out='results/transfer'" experiments/transfer/plot.gp
# draws OUT/transfer.png
if (!exists("out")) out = "results/transfer"
set datafile separator ","
set terminal pngcairo size 950,1050 font ",10"
set output out."/transfer.png"
# system = the part of column 1 after "domain:"; dom(s) = the part before
sysof(s) = s[strstrt(s, ":")+1:]
dom(s) = s[1:strstrt(s, ":")-1]
# systems in table.csv order (of the first domain); idx(name) = its 0-based position. table.csv
# holds the domains one after the other, n rows each (the tick labels of panel d are its rows)
stats out."/table.csv" every ::1::1 using (D0 = dom(strcol(1)), 0) nooutput
S = " "
stats out."/table.csv" every ::1 using (dom(strcol(1)) eq D0 ? (S = S.sysof(strcol(1))." ", 0) : 0) nooutput
n = words(S)
idx(s) = (p = strstrt(S, " ".s." "), p ? words(S[1:p]) : NaN)
pct(f) = f == 0 ? "0%" : f == 1 ? "100%" : f < 0.01 ? sprintf("%.2f%%", 100*f) : sprintf("%.1f%%", 100*f)
seedc = "#1f77b4 #ff7f0e #2ca02c #9467bd #8c564b"
stats out."/runs.csv" every ::1 using 2 nooutput
nseed = int(STATS_max)
step = nseed > 3 ? 0.05 : 0.07
set xrange [-0.6:n-0.4]
set xtics nomirror font ",9"
set grid ytics lc rgb "#dddddd"
set key off
set bmargin 3.5
clip(y) = y > ymax ? ymax : y < ymin ? ymin : y
set multiplot layout 3,1 title "transfer: pretrain on one domain, adapt to another (dots: one per seed; diamond and bars: mean ± sample SD over ".nseed." seeds;\ndashed: full fine-tuning mean; dotted: scratch mean; under each name the fraction of parameters tuned)"
do for [d=1:3] {
  D = word("fmnist udhr-ell udhr-deu", d)
  # column 6: accuracy (Fashion-MNIST, in %); column 7: bits per byte (LMs); table: 7 and 9
  rc = d == 1 ? 6 : 7
  tc = d == 1 ? 7 : 9
  sc = d == 1 ? 100 : 1
  if (d == 1) {
    ymin = 0; ymax = 100
    set title "Fashion-MNIST classes 0-4 -> 5-9 (2,000 rows, 80 steps; higher is better)"
    set ylabel "test accuracy on 5-9 (%)"
  }
  if (d == 2) {
    ymin = 1.5; ymax = 4.2
    set title "UDHR 11 languages -> Greek, held out (64 steps; lower is better)"
    set ylabel "Greek bits per byte"
  }
  if (d == 3) {
    ymin = 2.3; ymax = 5
    set title "UDHR 11 languages -> German, a seen script (64 steps; lower is better)"
    set ylabel "German bits per byte"
  }
  set yrange [ymin:ymax]
  stats out."/table.csv" every ::1 using (strcol(1) eq D.":full" ? sc*column(tc) : NaN) nooutput
  fullm = STATS_min
  stats out."/table.csv" every ::1 using (strcol(1) eq D.":scratch" ? sc*column(tc) : NaN) nooutput
  scratchm = STATS_min
  set arrow 1 from -0.6, fullm to n-0.4, fullm nohead dt 2 lc rgb "#888888"
  set arrow 2 from -0.6, scratchm to n-0.4, scratchm nohead dt 3 lc rgb "#555555"
  plot for [sd=1:nseed] out."/runs.csv" every ::1 using (idx(sysof(strcol(1))) - 0.28 + step*(sd - 1)):(dom(strcol(1)) eq D && $2 == sd ? clip(sc*column(rc)) : 1/0) \
           with points pt 7 ps 0.6 lc rgb word(seedc, sd), \
       out."/table.csv" every ::(1 + (d-1)*n)::(d*n) using (idx(sysof(strcol(1)))):(1/0):xticlabels(sysof(strcol(1))."\n".pct($5)) with points, \
       out."/table.csv" every ::1 using (dom(strcol(1)) eq D ? idx(sysof(strcol(1))) + 0.15 : 1/0):(sc*column(tc)):(sc*column(tc+1)) \
           with yerrorbars pt 13 ps 1.1 lc rgb "#d62728", \
       out."/table.csv" every ::1 using (dom(strcol(1)) eq D ? idx(sysof(strcol(1))) + 0.22 : 1/0):(clip(sc*column(tc)) + (sc*column(tc) > ymax ? -0.08 : 0.08)*(ymax - ymin)):\
           ((sc*column(tc) > ymax || sc*column(tc) < ymin) ? sprintf(d == 1 ? "%.1f %s" : "%.2f %s", sc*column(tc), sc*column(tc) > ymax ? "↑" : "↓") : "") \
           with labels left font ",9" tc rgb "#d62728"
}
unset multiplot
