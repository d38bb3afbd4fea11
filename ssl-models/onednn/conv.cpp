// The oneDNN convolution of ssl-models (feature `onednn`): forward, backward data and backward
// weights of a 2-D f32 convolution on NCHW / OIHW buffers, groups 1, no bias, no dilation.
// Each call builds its primitives (oneDNN's primitive cache makes repeated shapes cheap), lets
// them pick their layouts and reorders from and to the plain layouts, as PyTorch's mkldnn path.
// Returns 0, or -1 with the message in `err` (NUL-terminated, at most `err_len` bytes).
#include <oneapi/dnnl/dnnl.hpp>
#include <cstring>
#include <exception>

using namespace dnnl;

namespace {

struct Geometry {
    memory::dims x, w, y, stride, pad;
};

Geometry geometry(const long* xd, const long* wd, long sh, long sw, long ph, long pw) {
    long ho = (xd[2] + 2 * ph - wd[2]) / sh + 1, wo = (xd[3] + 2 * pw - wd[3]) / sw + 1;
    return {{xd[0], xd[1], xd[2], xd[3]}, {wd[0], wd[1], wd[2], wd[3]}, {xd[0], wd[0], ho, wo}, {sh, sw}, {ph, pw}};
}

engine& eng() {
    static engine e(engine::kind::cpu, 0);
    return e;
}

int fail(const std::exception& e, char* err, size_t err_len) {
    if (err_len > 0) {
        std::strncpy(err, e.what(), err_len - 1);
        err[err_len - 1] = 0;
    }
    return -1;
}

memory plain(const memory::dims& d, memory::format_tag tag, const float* p) {
    return memory({d, memory::data_type::f32, tag}, eng(), const_cast<float*>(p));
}

// `user` in the layout `want`, reordered when they differ.
memory as(const memory& user, const memory::desc& want, stream& st) {
    if (user.get_desc() == want) return user;
    memory m(want, eng());
    reorder(user, m).execute(st, const_cast<memory&>(user), m);
    return m;
}

void back(const memory& m, const memory& user, stream& st) {
    if (m.get_desc() == user.get_desc()) return;
    reorder(m, user).execute(st, const_cast<memory&>(m), const_cast<memory&>(user));
}

convolution_forward::primitive_desc forward_pd(const Geometry& g) {
    auto any = memory::format_tag::any;
    auto f32 = memory::data_type::f32;
    return convolution_forward::primitive_desc(
        convolution_forward::desc(prop_kind::forward_training, algorithm::convolution_direct,
                                  memory::desc(g.x, f32, any), memory::desc(g.w, f32, any),
                                  memory::desc(g.y, f32, any), g.stride, g.pad, g.pad),
        eng());
}

}  // namespace

extern "C" int ssl_onednn_conv2d_forward(const float* x, const long* xd, const float* w, const long* wd, long sh,
                                         long sw, long ph, long pw, float* y, char* err, size_t err_len) {
    try {
        auto g = geometry(xd, wd, sh, sw, ph, pw);
        stream st(eng());
        auto pd = forward_pd(g);
        auto ux = plain(g.x, memory::format_tag::nchw, x), uw = plain(g.w, memory::format_tag::oihw, w),
             uy = plain(g.y, memory::format_tag::nchw, y);
        auto mx = as(ux, pd.src_desc(), st), mw = as(uw, pd.weights_desc(), st);
        memory my = pd.dst_desc() == uy.get_desc() ? uy : memory(pd.dst_desc(), eng());
        convolution_forward(pd).execute(st, {{DNNL_ARG_SRC, mx}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DST, my}});
        back(my, uy, st);
        st.wait();
        return 0;
    } catch (const std::exception& e) {
        return fail(e, err, err_len);
    }
}

extern "C" int ssl_onednn_conv2d_backward(const float* x, const long* xd, const float* w, const long* wd,
                                          const float* dy, long sh, long sw, long ph, long pw, float* dx, float* dw,
                                          char* err, size_t err_len) {
    try {
        auto g = geometry(xd, wd, sh, sw, ph, pw);
        stream st(eng());
        auto fpd = forward_pd(g);
        auto any = memory::format_tag::any;
        auto f32 = memory::data_type::f32;
        auto xmd = memory::desc(g.x, f32, any), wmd = memory::desc(g.w, f32, any), ymd = memory::desc(g.y, f32, any);
        auto dpd = convolution_backward_data::primitive_desc(
            convolution_backward_data::desc(algorithm::convolution_direct, xmd, wmd, ymd, g.stride, g.pad, g.pad), eng(),
            fpd);
        auto wpd = convolution_backward_weights::primitive_desc(
            convolution_backward_weights::desc(algorithm::convolution_direct, xmd, wmd, ymd, g.stride, g.pad, g.pad),
            eng(), fpd);
        auto ux = plain(g.x, memory::format_tag::nchw, x), uw = plain(g.w, memory::format_tag::oihw, w),
             udy = plain(g.y, memory::format_tag::nchw, dy), udx = plain(g.x, memory::format_tag::nchw, dx),
             udw = plain(g.w, memory::format_tag::oihw, dw);
        // dx = backward data
        auto mdy = as(udy, dpd.diff_dst_desc(), st), mw = as(uw, dpd.weights_desc(), st);
        memory mdx = dpd.diff_src_desc() == udx.get_desc() ? udx : memory(dpd.diff_src_desc(), eng());
        convolution_backward_data(dpd).execute(st, {{DNNL_ARG_DIFF_DST, mdy}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DIFF_SRC, mdx}});
        back(mdx, udx, st);
        // dw = backward weights
        auto mx = as(ux, wpd.src_desc(), st), mdy2 = as(udy, wpd.diff_dst_desc(), st);
        memory mdw = wpd.diff_weights_desc() == udw.get_desc() ? udw : memory(wpd.diff_weights_desc(), eng());
        convolution_backward_weights(wpd).execute(
            st, {{DNNL_ARG_SRC, mx}, {DNNL_ARG_DIFF_DST, mdy2}, {DNNL_ARG_DIFF_WEIGHTS, mdw}});
        back(mdw, udw, st);
        st.wait();
        return 0;
    } catch (const std::exception& e) {
        return fail(e, err, err_len);
    }
}
