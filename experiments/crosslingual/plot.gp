# plot.gp: validation bits per byte per language for dense, switch and switch-lang, from
# OUT/languages.csv (every dot one seed). Top: bits/byte (diamond: mean over seeds). Bottom: the
# paired difference from dense in the same seed (diamond and bars: mean ± sample SD of the 3
# per-seed differences), the comparison the README's per-language table makes.
#   gnuplot -e "out='results/crosslingual'" experiments/crosslingual/plot.gp
# draws OUT/crosslingual.png
if (!exists("out")) out = "results/crosslingual"
set datafile separator ","
set terminal pngcairo size 1000,640 font ",10"
set output out."/crosslingual.png"
f = out."/languages.csv"
# languages grouped by script as in the README: the four Latin-script ones first
L = " eng fra deu spa rus ell arb hin heb kor cmn jpn "
nl = words(L)
li(s) = (p = strstrt(L, " ".s." "), p ? words(L[1:p]) : NaN)
sys = "dense switch switch-lang"
col = "#7f7f7f #1f77b4 #d62728"
off(i) = 0.27*(i - 2)
# mean and sample SD over seeds of column 6, or of its difference from dense in the same seed,
# per (system, language): rows "system,language,mean,sd"
agg = "awk -F, 'NR > 1 { k = $1 \",\" $3; v[k, ++n[k]] = $6; if (!(k in seen)) { seen[k] = 1; o[++m] = k } } END { for (i = 1; i <= m; i++) { k = o[i]; s = ss = 0; for (j = 1; j <= n[k]; j++) s += v[k, j]; mu = s / n[k]; for (j = 1; j <= n[k]; j++) ss += (v[k, j] - mu)^2; print k \",\" mu \",\" (n[k] > 1 ? sqrt(ss / (n[k] - 1)) : 0) } }'"
# per-seed difference from dense: rows "system,seed,language,,,diff" (column 6 kept for agg)
diff = sprintf("awk -F, 'NR > 1 && $1 == \"dense\" { d[$2, $3] = $6 } NR > 1 && $1 != \"dense\" { r[++m] = $0 } END { print \"header\"; for (i = 1; i <= m; i++) { split(r[i], a, \",\"); print a[1] \",\" a[2] \",\" a[3] \",,,\" a[6] - d[a[2], a[3]] } }' %s", f)
set xrange [-0.6:nl-0.4]
set xtics () nomirror
do for [i=1:nl] { set xtics add (word(L, i) i - 1) }
set grid ytics lc rgb "#dddddd"
set arrow 1 from 3.5, graph 0 to 3.5, graph 1 nohead dt 3 lc rgb "#999999"
set multiplot layout 2,1 title "UDHR in 12 languages, byte-level LM, validation bits per byte (lower is better); dots: one per seed"
set title "bits per byte (diamond: mean); left of the dotted line the Latin-script languages"
set ylabel "bits per byte"
set key top center box opaque samplen 1 font ",9" maxrows 1
plot for [i=1:3] f every ::1 using (li(strcol(3)) + off(i)):(strcol(1) eq word(sys, i) ? $6 : 1/0) \
         with points pt 7 ps 0.5 lc rgb word(col, i) title word(sys, i), \
     for [i=1:3] "< ".agg." ".f using (li(strcol(2)) + off(i)):(strcol(1) eq word(sys, i) ? $3 : 1/0) \
         with points pt 12 ps 1.1 lc rgb word(col, i) notitle
set title "difference from dense in the same seed (below 0: better than dense; diamond and bars: mean ± sample SD of the per-seed differences)"
set ylabel "bits per byte − dense"
set arrow 2 from -0.6, 0 to nl-0.4, 0 nohead lc rgb "#555555"
set key top left
off2(i) = 0.2*(2*i - 5)
plot for [i=2:3] "< ".diff using (li(strcol(3)) + off2(i) - 0.06):(strcol(1) eq word(sys, i) ? $6 : 1/0) \
         with points pt 7 ps 0.5 lc rgb word(col, i) title word(sys, i)." − dense", \
     for [i=2:3] "< ".diff." | ".agg using (li(strcol(2)) + off2(i) + 0.06):(strcol(1) eq word(sys, i) ? $3 : 1/0):4 \
         with yerrorbars pt 13 ps 0.9 lc rgb word(col, i) notitle
unset multiplot
