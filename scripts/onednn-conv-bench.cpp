// Times a convolution forward (training) + backward data + backward weights with oneDNN (the
// library PyTorch's CPU convolutions come from), NCHW in and out with the reorders, to compare
// with `cargo run --release -p ssl-models --example conv_bench -- N C O H K STRIDE PAD ITERS`.
//   apt-get install libdnnl-dev   # oneDNN 2.6 (Debian 12)
//   g++ -O2 -o /tmp/onednn-conv-bench scripts/onednn-conv-bench.cpp -ldnnl
//   OMP_NUM_THREADS=2 /tmp/onednn-conv-bench N C O H K STRIDE PAD [ITERS]
// conv forward (training) + backward data + backward weights with oneDNN, NCHW user memory,
// primitives choose their layout (any), reorders included, as PyTorch's mkldnn path.
#include <oneapi/dnnl/dnnl.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>
using namespace dnnl;
int main(int argc, char** argv) {
    int N = atoi(argv[1]), C = atoi(argv[2]), O = atoi(argv[3]), H = atoi(argv[4]), K = atoi(argv[5]),
        S = atoi(argv[6]), P = atoi(argv[7]), iters = argc > 8 ? atoi(argv[8]) : 10;
    int HO = (H + 2 * P - K) / S + 1;
    engine eng(engine::kind::cpu, 0);
    stream st(eng);
    memory::dims xd = {N, C, H, H}, wd = {O, C, K, K}, yd = {N, O, HO, HO}, sd = {S, S}, pd = {P, P};
    auto f32 = memory::data_type::f32;
    auto x_md = memory::desc(xd, f32, memory::format_tag::any), w_md = memory::desc(wd, f32, memory::format_tag::any),
         y_md = memory::desc(yd, f32, memory::format_tag::any);
    auto fwd_pd = convolution_forward::primitive_desc(
        convolution_forward::desc(prop_kind::forward_training, algorithm::convolution_direct, x_md, w_md, y_md, sd, pd, pd), eng);
    auto bwd_d_pd = convolution_backward_data::primitive_desc(
        convolution_backward_data::desc(algorithm::convolution_direct, x_md, w_md, y_md, sd, pd, pd), eng, fwd_pd);
    auto bwd_w_pd = convolution_backward_weights::primitive_desc(
        convolution_backward_weights::desc(algorithm::convolution_direct, x_md, w_md, y_md, sd, pd, pd), eng, fwd_pd);
    std::vector<float> xv(N * C * H * H, 0.5f), wv(O * C * K * K, 0.1f), dyv(N * O * HO * HO, 0.2f);
    memory ux({xd, f32, memory::format_tag::nchw}, eng, xv.data()), uw({wd, f32, memory::format_tag::oihw}, eng, wv.data()),
        udy({yd, f32, memory::format_tag::nchw}, eng, dyv.data());
    memory ux2({xd, f32, memory::format_tag::nchw}, eng), uw2({wd, f32, memory::format_tag::oihw}, eng),
        uy({yd, f32, memory::format_tag::nchw}, eng);
    auto run = [&]() {
        memory x(fwd_pd.src_desc(), eng), w(fwd_pd.weights_desc(), eng), y(fwd_pd.dst_desc(), eng);
        reorder(ux, x).execute(st, ux, x);
        reorder(uw, w).execute(st, uw, w);
        convolution_forward(fwd_pd).execute(st, {{DNNL_ARG_SRC, x}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, y}});
        reorder(y, uy).execute(st, y, uy);
        memory dy(bwd_d_pd.diff_dst_desc(), eng), dx(bwd_d_pd.diff_src_desc(), eng), wb(bwd_d_pd.weights_desc(), eng);
        reorder(udy, dy).execute(st, udy, dy);
        reorder(uw, wb).execute(st, uw, wb);
        convolution_backward_data(bwd_d_pd).execute(st, {{DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_WEIGHTS, wb}, {DNNL_ARG_DIFF_SRC, dx}});
        reorder(dx, ux2).execute(st, dx, ux2);
        memory dy2(bwd_w_pd.diff_dst_desc(), eng), x2(bwd_w_pd.src_desc(), eng), dw(bwd_w_pd.diff_weights_desc(), eng);
        reorder(udy, dy2).execute(st, udy, dy2);
        reorder(ux, x2).execute(st, ux, x2);
        convolution_backward_weights(bwd_w_pd).execute(st, {{DNNL_ARG_SRC, x2}, {DNNL_ARG_DIFF_DST, dy2}, {DNNL_ARG_DIFF_WEIGHTS, dw}});
        reorder(dw, uw2).execute(st, dw, uw2);
        st.wait();
    };
    run();
    auto t = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; i++) run();
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count() / iters;
    double gflop = 3.0 * 2.0 * N * O * HO * HO * (double)C * K * K / 1e9;
    printf("onednn: %.2f ms forward + backward (%.1f GFLOP/s), impl %s\n", ms, gflop / ms * 1e3, fwd_pd.impl_info_str());
}
